import Foundation
import GRDB

/// The embedded default ``QueueDatabase``: one SQLite file, opened with GRDB in WAL mode.
///
/// - Durability, as the protocol states it: durable writes (pushes, removals, dead-lettering, user
///   actions) commit with `synchronous=FULL` (configurable): once the call returned they survive a
///   crash or a power cut. Replay bookkeeping (leases, deleting delivered entries, counting a
///   failed attempt) is crash-safe: it commits with `NORMAL`, so a power cut may roll back the
///   last of it and a delivered request may be sent once more (with its `Idempotency-Key`).
/// - Batching: concurrent pushes share commits (group commit); a replay leases several entries per
///   commit and deletes delivered entries in the commit that leases the next ones.
/// - Several processes may open the same file: writes are serialised by SQLite, replay claims use
///   leases, and a busy database is waited for (``Configuration/busyTimeout``).
/// - A new file is created with mode 0600 (its `-wal` and `-shm` files inherit it), in a folder
///   created with mode 0700 if missing.
/// - Opening a file that is not a SQLite database, or that a newer version of this library wrote,
///   throws ``BackgroundSyncError/Code/notADatabase`` or ``BackgroundSyncError/Code/schemaTooNew``
///   and leaves the file untouched.
/// - Files next to the database: SQLite's `-wal` and `-shm` while it is open; `<file>.reserve`,
///   room held for deletions on a full disk (``Configuration/diskReserve``; excluded from
///   backups on Apple platforms); `<file>.damaged`, once SQLite found the file damaged (it then
///   takes no more writes: ``salvage(from:to:)``). Remove them with the database.
public final class SQLiteQueueDatabase: QueueDatabase {
    /// How a ``SQLiteQueueDatabase`` is opened.
    public struct Configuration: Sendable {
        /// SQLite's `synchronous` setting.
        public enum Synchronous: String, Sendable {
            /// `FULL`: a commit is on disk when it returns (the default).
            case full = "FULL"
            /// `NORMAL`: in WAL mode a power cut may lose the last commits, never corrupt the file.
            case normal = "NORMAL"
        }

        /// `PRAGMA synchronous` for durable writes (replay bookkeeping always uses `.normal`).
        /// Default: `.full`.
        public var synchronous: Synchronous
        /// How long a write waits for another process's lock before failing. Default: 10 seconds.
        public var busyTimeout: Duration
        /// Open without ever writing to the file (for inspection tools): the file must exist and be
        /// up to date; every write throws. Default: `false`.
        ///
        /// Opened by another user than the file's owner (or by one who may not write it) while it has
        /// no `-wal` file (no process has it open for writing), the file is read as it is on disk,
        /// without SQLite's locks, `-wal` and `-shm` files: a user who may read the file but not
        /// write it or its folder can read it, and leaves no file the owner cannot use. Writes
        /// another process starts after the opening are then not seen, and a read that overlaps
        /// one may fail ("try again"). The owner reads through SQLite (which may leave an empty
        /// `-wal` and `-shm` of the owner's).
        public var readOnly: Bool
        /// Bytes held in a file next to the database (`<file>.reserve`) so that entries can still
        /// be deleted, and a queue drained, when the disk is full: SQLite's WAL needs room even to
        /// delete. Released only for that, and made again once there is room. `0`: no reserve.
        /// Default: 256 KiB.
        public var diskReserve: Int

        /// Creates a configuration; every parameter has its default.
        public init(
            synchronous: Synchronous = .full, busyTimeout: Duration = .seconds(10), readOnly: Bool = false,
            diskReserve: Int = 256 << 10
        ) {
            self.synchronous = synchronous
            self.busyTimeout = busyTimeout
            self.readOnly = readOnly
            self.diskReserve = diskReserve
        }
    }

    /// The file path, or `":memory:"`.
    public let path: String
    /// `sqlite:` and the file's canonical path (symbolic links resolved): two instances on one file
    /// have the same identity.
    public let identity: String
    let writer: any DatabaseWriter
    /// Read-only, and reading the file as a snapshot (see ``Configuration/readOnly``).
    let readsSnapshot: Bool
    /// Space held for deletions on a full disk; `nil` in memory and read-only.
    let reserve: DiskReserve?
    /// `PRAGMA synchronous` for durable writes (the configured mode) and for replay bookkeeping.
    let synchronous: SynchronousModes
    /// Concurrent pushes share transactions (group commit).
    let pushes: GroupCommit<Database, PendingPush, PushedEntry>
    /// Entries replays delivered and have not deleted yet, by queue: left out of counts and lists.
    let undeletedDeliveries: Locked<[String: Set<Int64>]>
    /// The read-only connection replays check their leases with, opened when first needed.
    let leaseCheckConnection = Locked<DatabaseQueue?>(nil)
    /// How long a statement waits for another connection's lock (``Configuration/busyTimeout``).
    let busyTimeout: Duration
    /// A folder this instance created and removes when it goes away (``temporary()``).
    private let ownedDirectory: URL?

    /// Opens (creating if needed) the database file at `path`.
    public convenience init(path: String, configuration: Configuration = Configuration()) throws {
        try self.init(path: path, configuration: configuration, ownedDirectory: nil)
    }

    private init(path: String, configuration: Configuration, ownedDirectory: URL?) throws {
        let url = URL(fileURLWithPath: path).standardizedFileURL
        self.path = url.path
        self.identity = "sqlite:" + url.resolvingSymlinksInPath().path
        self.ownedDirectory = ownedDirectory
        self.busyTimeout = configuration.busyTimeout
        let reserve = configuration.readOnly || configuration.diskReserve <= 0
            ? nil : DiskReserve(databasePath: url.path, size: configuration.diskReserve)
        self.reserve = reserve
        (writer, readsSnapshot) = try Self.openPool(at: url, configuration: configuration, reserve: reserve)
        reserve?.ensure()
        synchronous = SynchronousModes(durable: configuration.synchronous, path: self.path)
        let undeletedDeliveries = Locked<[String: Set<Int64>]>([:])
        self.undeletedDeliveries = undeletedDeliveries
        pushes = Self.makePushes(
            writer: writer, path: self.path, synchronous: synchronous, undeletedDeliveries: undeletedDeliveries,
            reserve: reserve)
    }

    private init(memory: Void) throws {
        path = ":memory:"
        reserve = nil
        readsSnapshot = false
        identity = "memory:" + UUID().uuidString
        ownedDirectory = nil
        busyTimeout = Configuration().busyTimeout
        do {
            let queue = try DatabaseQueue(configuration: Self.grdbConfiguration(Configuration()))
            try Self.migrator.migrate(queue)
            writer = queue
        } catch {
            throw Self.mapError(error, path: ":memory:", action: "open")
        }
        synchronous = SynchronousModes(durable: .full, path: path)
        let undeletedDeliveries = Locked<[String: Set<Int64>]>([:])
        self.undeletedDeliveries = undeletedDeliveries
        pushes = Self.makePushes(
            writer: writer, path: path, synchronous: synchronous, undeletedDeliveries: undeletedDeliveries,
            reserve: reserve)
    }

    deinit {
        if let ownedDirectory {
            try? FileManager.default.removeItem(at: ownedDirectory)
        }
    }

    /// Closes the file's connections now instead of when the instance goes away. The last
    /// connection to the file in any process checkpoints the WAL and removes the `-wal` and `-shm`
    /// files, so a short-lived tool that exits without its objects being released should call it:
    /// files left behind keep the main file's permissions of the moment they were created, which
    /// can keep another user from reading. Reads and writes under way are waited for; every later
    /// use of this instance throws. Throws if SQLite cannot close (the database then stays open).
    /// A ``shared(path:)`` instance that is closed is no longer handed out.
    public func close() throws {
        do {
            try leaseCheckConnection.withLock { connection in
                try connection?.close()
                connection = nil
            }
            // The pool's read-only readers first: the last connection to close is the one that
            // checkpoints and removes the WAL, and a read-only one cannot.
            (writer as? DatabasePool)?.releaseMemory()
            try writer.close()
            // The -wal and -shm files are gone: their room may make the reserve again.
            reserve?.restoreIfReleased()
            Self.sharedDatabases.withLock { databases in
                if let key = databases.first(where: { $0.value === self })?.key { databases[key] = nil }
            }
        } catch {
            throw Self.mapError(error, path: path, action: "close")
        }
    }

    /// A database that lives in memory only, for tests and previews. Nothing survives the instance.
    public static func inMemory() throws -> SQLiteQueueDatabase {
        try SQLiteQueueDatabase(memory: ())
    }

    /// A database in a new file of a new temporary folder, removed when the instance goes away.
    public static func temporary(configuration: Configuration = Configuration()) throws -> SQLiteQueueDatabase {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("background-sync-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(
            at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        return try SQLiteQueueDatabase(
            path: directory.appendingPathComponent("queue.sqlite").path,
            configuration: configuration,
            ownedDirectory: directory)
    }

    /// The default database file: `background-sync.sqlite` in the application-support folder on
    /// Apple platforms (in a folder named after the bundle id), or in `$XDG_DATA_HOME/swift-background-sync`
    /// (default `~/.local/share/swift-background-sync`) elsewhere.
    public static func defaultPath() -> String {
        #if canImport(Darwin)
        // `url(for:in:appropriateFor:create:)` and `NSHomeDirectory()` exist on iOS, tvOS, watchOS
        // and macOS alike (`homeDirectoryForCurrentUser` is macOS-only).
        let base = (try? FileManager.default.url(
            for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: false))
            ?? URL(fileURLWithPath: NSHomeDirectory()).appendingPathComponent("Library/Application Support")
        let folder = Bundle.main.bundleIdentifier ?? "swift-background-sync"
        return base.appendingPathComponent(folder).appendingPathComponent("background-sync.sqlite").path
        #else
        return linuxDefaultPath(environment: ProcessInfo.processInfo.environment, home: NSHomeDirectory())
        #endif
    }

    /// The default path outside Apple platforms, given the environment and the home folder.
    static func linuxDefaultPath(environment: [String: String], home: String) -> String {
        let base: URL
        if let xdg = environment["XDG_DATA_HOME"], xdg.hasPrefix("/") {
            base = URL(fileURLWithPath: xdg)
        } else {
            base = URL(fileURLWithPath: home).appendingPathComponent(".local/share")
        }
        return base.appendingPathComponent("swift-background-sync/background-sync.sqlite").path
    }

    private static let sharedDatabases = Locked<[String: SQLiteQueueDatabase]>([:])

    /// The process-wide instance for the file at `path` (default: ``defaultPath()``), opened once.
    public static func shared(path: String = defaultPath()) throws -> SQLiteQueueDatabase {
        let key = URL(fileURLWithPath: path).standardizedFileURL.path
        return try sharedDatabases.withLock { databases in
            if let database = databases[key] { return database }
            let database = try SQLiteQueueDatabase(path: key)
            databases[key] = database
            return database
        }
    }

    public func claims(
        queueName: String, order: ReplayOrder, owner: LeaseOwner, leaseDuration: Duration, clock: any WallClock
    ) -> any ReplayClaims {
        SQLiteReplayClaims(
            database: self, queueName: queueName, order: order, owner: owner, leaseDuration: leaseDuration,
            clock: clock)
    }
}
