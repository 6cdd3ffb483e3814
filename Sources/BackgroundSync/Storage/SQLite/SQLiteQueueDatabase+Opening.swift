import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension SQLiteQueueDatabase {
    /// Opens the pool on `url`: checks an existing file read-only first, creates a missing one
    /// with mode 0600, then migrates (or, read-only, checks that no migration is needed).
    /// On a full disk (SQLite cannot make its `-wal` and `-shm` files), the opening for writing
    /// releases the file's reserve and tries again, so that entries can still be deleted; a file
    /// it created is removed when the opening fails.
    static func openPool(
        at url: URL, configuration: Configuration, reserve: DiskReserve? = nil
    ) throws -> (pool: DatabasePool, snapshot: Bool) {
        var created = false
        // Removes the file this opening created, if nothing was written to it (another process
        // may have created it at the same moment and written since).
        func removeCreated() {
            guard created, !FileManager.default.fileExists(atPath: url.path + "-wal"),
                (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) == 0
            else { return }
            try? FileManager.default.removeItem(at: url)
        }
        do {
            return try openPoolOnce(at: url, configuration: configuration, created: &created)
        } catch let error as BackgroundSyncError where isDiskFull(error, path: url.path) {
            guard let reserve, reserve.release() else {
                removeCreated()
                throw error
            }
            do {
                return try openPoolOnce(at: url, configuration: configuration, created: &created)
            } catch {
                removeCreated()
                throw error
            }
        } catch {
            removeCreated()
            throw error
        }
    }

    private static func openPoolOnce(
        at url: URL, configuration: Configuration, created: inout Bool
    ) throws -> (pool: DatabasePool, snapshot: Bool) {
        if configuration.readOnly {
            let snapshot = readsAsSnapshot(url.path)
            do {
                return (try openPoolOnce(at: url, configuration: configuration, snapshot: snapshot), snapshot)
            } catch let error as BackgroundSyncError
                where !snapshot && canReadAsSnapshot(url.path) && error.code == .storage
                && !error.message.contains("is damaged") && !error.message.contains("locked")
            {
                // Read access to the file, not write access to its folder (SQLite could not make
                // its -shm file): a snapshot needs none. If that fails too, the first error says why.
                guard let pool = try? openPoolOnce(at: url, configuration: configuration, snapshot: true) else { throw error }
                return (pool, true)
            }
        }
        if FileManager.default.fileExists(atPath: url.path) {
            try DamagedFiles.checkMarker(path: url.path)
        } else if try createFile(at: url) {
            created = true
            DamagedFiles.noteCreated(path: url.path)
        }
        return (try openPoolOnce(at: url, configuration: configuration, snapshot: false), false)
    }

    private static func openPoolOnce(at url: URL, configuration: Configuration, snapshot: Bool) throws -> DatabasePool {
        var config = grdbConfiguration(configuration)
        let openPath = snapshot ? snapshotURI(url.path) : url.path
        if FileManager.default.fileExists(atPath: url.path) {
            try checkExistingFile(at: url.path, openPath: openPath, snapshot: snapshot, configuration: config)
        } else if configuration.readOnly {
            throw BackgroundSyncError(.storage, "no database at '\(url.path)'")
        }
        config.readonly = configuration.readOnly
        do {
            let pool = try DatabasePool(path: openPath, configuration: config)
            if configuration.readOnly {
                guard try pool.read(migrator.hasCompletedMigrations) else {
                    throw BackgroundSyncError(
                        .storage, "'\(url.path)' needs an upgrade to this version's schema; open it once for writing")
                }
            } else {
                // GRDB turns a pool's writer to `synchronous=NORMAL` when it enables WAL, after
                // `prepareDatabase` ran: set the configured mode again on the (only) writer
                // connection, or commits would not be synced and a power cut could lose them.
                try pool.writeWithoutTransaction { db in
                    try db.execute(sql: "PRAGMA synchronous = \(configuration.synchronous.rawValue)")
                }
                try migrator.migrate(pool)
            }
            return pool
        } catch {
            throw mapError(error, path: url.path, action: "open", snapshot: snapshot)
        }
    }


    /// Whether a read-only opening reads the file as a snapshot (an immutable URI) rather than
    /// through SQLite's locks and WAL: when no `-wal` file exists (no process has the file open
    /// for writing) and the reader is not the file's owner. SQLite would otherwise create `-wal`
    /// and `-shm` files owned by the reader, which keep the owner from writing. A snapshot takes
    /// no lock: a writer that starts meanwhile is not seen, and a read that overlaps its
    /// checkpoint may fail (reported as such, never as damage) or see a mix of old and new pages.
    static func readsAsSnapshot(_ path: String) -> Bool {
        guard canReadAsSnapshot(path) else { return false }
        var info = stat()
        // The owner reads through SQLite, unless it may not write the file either (a 0400 file:
        // the -wal and -shm it left would keep their mode after the file's is changed back).
        return stat(path, &info) == 0 && (info.st_uid != geteuid() || access(path, W_OK) != 0)
    }

    /// Whether a snapshot read is possible: no `-wal` file, and SQLite takes URIs.
    static func canReadAsSnapshot(_ path: String) -> Bool {
        sqliteTakesURIs && !FileManager.default.fileExists(atPath: path + "-wal")
    }

    /// The immutable URI of a file.
    static func snapshotURI(_ path: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "?#%")
        return "file:" + (path.addingPercentEncoding(withAllowedCharacters: allowed) ?? path) + "?immutable=1"
    }

    /// Whether the SQLite library reads `file:` URIs in file names (built with `SQLITE_USE_URI`).
    private static let sqliteTakesURIs: Bool = {
        let options = try? DatabaseQueue().read { db in try String.fetchAll(db, sql: "PRAGMA compile_options") }
        return options?.contains("USE_URI") ?? false
    }()

    static func grdbConfiguration(_ configuration: Configuration) -> GRDB.Configuration {
        var config = GRDB.Configuration()
        config.busyMode = .timeout(configuration.busyTimeout.timeInterval)
        config.label = "BackgroundSync"
        let synchronous = configuration.synchronous.rawValue
        config.prepareDatabase { db in
            // A WAL that grew (a long read held checkpoints back) is cut back to 4 MiB when it
            // restarts, instead of keeping its largest size.
            try db.execute(sql: "PRAGMA synchronous = \(synchronous); PRAGMA journal_size_limit = 4194304")
        }
        return config
    }

    /// Creates the folder (0700) and an empty file (0600) so that SQLite never creates it with the
    /// process umask. Returns whether this call created the file (another process may have).
    @discardableResult
    private static func createFile(at url: URL) throws -> Bool {
        let directory = url.deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(
                at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw BackgroundSyncError(
                .storage, "cannot create the folder '\(directory.path)' for the database", underlying: error)
        }
        let fd = open(url.path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        if fd < 0 {
            let code = errno
            if code == EEXIST { return false }
            throw BackgroundSyncError(
                .storage, "cannot create the database file '\(url.path)': \(String(cString: strerror(code)))")
        }
        closeDescriptor(fd)
        return true
    }

    /// Checks, read-only, that an existing file is a SQLite database whose schema this version
    /// knows, so that a wrong or newer file is reported without being modified.
    private static func checkExistingFile(
        at path: String, openPath: String, snapshot: Bool, configuration: GRDB.Configuration
    ) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw BackgroundSyncError(.notADatabase, "'\(path)' is a directory, not a database file")
        }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw BackgroundSyncError(.storage, "cannot read the database file '\(path)': permission denied")
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        if size == 0 { return }  // an empty file is a new database
        var readOnly = configuration
        readOnly.readonly = true
        do {
            let queue = try DatabaseQueue(path: openPath, configuration: readOnly)
            let superseded = try queue.read { db -> Bool in
                _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM sqlite_master")
                return try migrator.hasBeenSuperseded(db)
            }
            try queue.close()
            if superseded {
                throw BackgroundSyncError(
                    .schemaTooNew,
                    "'\(path)' was written by a newer version of swift-background-sync; upgrade to open it")
            }
        } catch let error as BackgroundSyncError {
            throw error
        } catch {
            throw mapError(error, path: path, action: "open", snapshot: snapshot)
        }
    }
}

/// The C library's `close`, which the database's own `close()` hides inside its type.
private func closeDescriptor(_ descriptor: Int32) {
    _ = close(descriptor)
}
