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
    static func openPool(at url: URL, configuration: Configuration, reserve: DiskReserve? = nil) throws -> DatabasePool {
        let created = !FileManager.default.fileExists(atPath: url.path)
        do {
            return try openPoolOnce(at: url, configuration: configuration)
        } catch let error as BackgroundSyncError where error.code == .storage && (freeBytes(near: url.path) ?? .max) < 64 << 10 {
            guard let reserve, reserve.release() else {
                if created { try? FileManager.default.removeItem(at: url) }
                throw error
            }
            do {
                return try openPoolOnce(at: url, configuration: configuration)
            } catch {
                if created { try? FileManager.default.removeItem(at: url) }
                throw error
            }
        } catch {
            if created, (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) == 0 {
                try? FileManager.default.removeItem(at: url)
            }
            throw error
        }
    }

    private static func openPoolOnce(at url: URL, configuration: Configuration) throws -> DatabasePool {
        var config = grdbConfiguration(configuration)
        let openPath = configuration.readOnly ? readOnlyPath(url.path) : url.path
        if FileManager.default.fileExists(atPath: url.path) {
            if !configuration.readOnly { try DamagedFiles.checkMarker(path: url.path) }
            try checkExistingFile(at: url.path, openPath: openPath, configuration: config)
        } else if configuration.readOnly {
            throw BackgroundSyncError(.storage, "no database at '\(url.path)'")
        } else {
            try createFile(at: url)
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
            throw mapError(error, path: url.path, action: "open")
        }
    }


    /// What a read-only connection opens: the file itself while a `-wal` file exists (a writer
    /// may have it open; SQLite reads the WAL, and its `-shm` read-only if it cannot write it), else
    /// the file as an immutable URI, so that SQLite creates no `-wal` or `-shm` file: one created
    /// by another user would keep the owner from writing, and a folder the reader cannot write
    /// would keep it from reading.
    static func readOnlyPath(_ path: String) -> String {
        guard sqliteTakesURIs, !FileManager.default.fileExists(atPath: path + "-wal") else { return path }
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
    /// process umask.
    private static func createFile(at url: URL) throws {
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
            if code == EEXIST { return }
            throw BackgroundSyncError(
                .storage, "cannot create the database file '\(url.path)': \(String(cString: strerror(code)))")
        }
        closeDescriptor(fd)
    }

    /// Checks, read-only, that an existing file is a SQLite database whose schema this version
    /// knows, so that a wrong or newer file is reported without being modified.
    private static func checkExistingFile(at path: String, openPath: String, configuration: GRDB.Configuration) throws {
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
            throw mapError(error, path: path, action: "open")
        }
    }
}

/// The C library's `close`, which the database's own `close()` hides inside its type.
private func closeDescriptor(_ descriptor: Int32) {
    _ = close(descriptor)
}
