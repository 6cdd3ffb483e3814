import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The embedded default ``QueueDatabase``: one SQLite file, opened with GRDB in WAL mode.
///
/// - Durability: every write is one transaction. Pushes, dead-lettering and user actions (requeue,
///   purge, delete) commit with `synchronous=FULL` (configurable): once the call returned they
///   survive a crash or a power cut. Replay bookkeeping (leases, deleting a delivered entry, counting
///   a failed attempt) commits with `NORMAL`: it survives a crash of the process; a power cut may
///   roll back the last of it, so a delivered request may be sent once more (with its
///   `Idempotency-Key`).
/// - Several processes may open the same file: writes are serialised by SQLite, replay claims use
///   leases, and a busy database is waited for (``Configuration/busyTimeout``).
/// - A new file is created with mode 0600 (its `-wal` and `-shm` files inherit it), in a folder
///   created with mode 0700 if missing.
/// - Opening a file that is not a SQLite database, or that a newer version of this library wrote,
///   throws ``BackgroundSyncError/Code/notADatabase`` or ``BackgroundSyncError/Code/schemaTooNew``
///   and leaves the file untouched.
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

        /// `PRAGMA synchronous` for pushes, dead-lettering and user actions (replay bookkeeping
        /// always uses `.normal`). Default: `.full`.
        public var synchronous: Synchronous
        /// How long a write waits for another process's lock before failing. Default: 10 seconds.
        public var busyTimeout: Duration
        /// Open without ever writing to the file (for inspection tools): the file must exist and be
        /// up to date; every write throws. Default: `false`.
        public var readOnly: Bool

        /// Creates a configuration; every parameter has its default.
        public init(synchronous: Synchronous = .full, busyTimeout: Duration = .seconds(10), readOnly: Bool = false) {
            self.synchronous = synchronous
            self.busyTimeout = busyTimeout
            self.readOnly = readOnly
        }
    }

    /// The file path, or `":memory:"`.
    public let path: String
    public let identity: String
    let writer: any DatabaseWriter
    /// `PRAGMA synchronous` for durable writes (the configured mode) and for replay bookkeeping.
    private let synchronous: SynchronousModes
    /// Concurrent inserts share transactions (group commit).
    private let inserts: GroupCommit<Database, PendingInsert, InsertedEntry>
    /// Concurrent deletions of delivered entries share transactions too.
    private let deletes: GroupCommit<Database, Int64, Void>
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
        var config = Self.grdbConfiguration(configuration)
        if FileManager.default.fileExists(atPath: url.path) {
            try Self.checkExistingFile(at: url.path, configuration: config)
        } else if configuration.readOnly {
            throw BackgroundSyncError(.storage, "no database at '\(url.path)'")
        } else {
            try Self.createFile(at: url)
        }
        config.readonly = configuration.readOnly
        do {
            let pool = try DatabasePool(path: url.path, configuration: config)
            if !configuration.readOnly {
                // GRDB turns a pool's writer to `synchronous=NORMAL` when it enables WAL, after
                // `prepareDatabase` ran: set the configured mode again on the (only) writer
                // connection, or commits would not be synced and a power cut could lose them.
                try pool.writeWithoutTransaction { db in
                    try db.execute(sql: "PRAGMA synchronous = \(configuration.synchronous.rawValue)")
                }
            }
            if configuration.readOnly {
                guard try pool.read(Self.migrator.hasCompletedMigrations) else {
                    throw BackgroundSyncError(
                        .storage, "'\(url.path)' needs an upgrade to this version's schema; open it once for writing")
                }
            } else {
                try Self.migrator.migrate(pool)
            }
            writer = pool
        } catch {
            throw Self.mapError(error, path: url.path, action: "open")
        }
        synchronous = SynchronousModes(durable: configuration.synchronous)
        inserts = Self.makeGroupCommit(writer: writer, path: self.path, synchronous: synchronous)
        deletes = Self.makeDeleteGroupCommit(writer: writer, path: self.path, synchronous: synchronous)
    }

    private init(memory: Void) throws {
        path = ":memory:"
        identity = "memory:" + UUID().uuidString
        ownedDirectory = nil
        do {
            let queue = try DatabaseQueue(configuration: Self.grdbConfiguration(Configuration()))
            try Self.migrator.migrate(queue)
            writer = queue
        } catch {
            throw Self.mapError(error, path: ":memory:", action: "open")
        }
        synchronous = SynchronousModes(durable: .full)
        inserts = Self.makeGroupCommit(writer: writer, path: path, synchronous: synchronous)
        deletes = Self.makeDeleteGroupCommit(writer: writer, path: path, synchronous: synchronous)
    }

    /// One insert waiting for its group commit. A class: the writer moves batches of them around
    /// (one retain each rather than one per field).
    final class PendingInsert: Sendable {
        let row: EntryRow
        let queueName: String
        let end: QueueEnd
        let syncTag: String?

        init(row: EntryRow, queueName: String, end: QueueEnd, syncTag: String?) {
            self.row = row
            self.queueName = queueName
            self.end = end
            self.syncTag = syncTag
        }
    }

    /// Deletions of delivered entries are replay bookkeeping (see ``SynchronousModes``).
    private static func makeDeleteGroupCommit(
        writer: any DatabaseWriter, path: String, synchronous: SynchronousModes
    ) -> GroupCommit<Database, Int64, Void> {
        groupCommit(writer: writer, path: path, mode: synchronous.bookkeeping, synchronous, action: "delete from") { db, ids in
            try deleteEntries(ids, db)
            return ids.map { _ in () }
        }
    }

    private static func makeGroupCommit(
        writer: any DatabaseWriter, path: String, synchronous: SynchronousModes
    ) -> GroupCommit<Database, PendingInsert, InsertedEntry> {
        let openEnds = OpenEnds([:])
        return groupCommit(
            writer: writer, path: path, mode: synchronous.durable, synchronous, action: "write to",
            begin: { openEnds.withLock { $0.removeAll(keepingCapacity: true) } }
        ) { db, batch in
            let inserted = try insert(batch, db, openEnds: openEnds)
            let registeredAt = Date().timeIntervalSince1970
            for tag in Set(batch.compactMap(\.syncTag)) {
                try db.cachedStatement(
                    sql: "INSERT INTO syncRegistration(tag, registeredAt) VALUES (?, ?) ON CONFLICT(tag) DO NOTHING"
                ).execute(arguments: [tag, registeredAt])
            }
            return inserted
        }
    }

    /// A group commit whose batches run on `writer`'s queue, each in one transaction; `body`
    /// writes items in the open transaction (a gathering batch calls it as writes arrive);
    /// `begin` runs before each transaction opens.
    private static func groupCommit<Item: Sendable, Output: Sendable>(
        writer: any DatabaseWriter, path: String, mode: String, _ synchronous: SynchronousModes, action: String,
        begin: (@Sendable () -> Void)? = nil,
        _ body: @escaping @Sendable (Database, [Item]) throws -> [Output]
    ) -> GroupCommit<Database, Item, Output> {
        // Gathering pays when a commit waits for the disk; otherwise it would only add latency.
        let gatherDelay: (@Sendable (Duration) -> Duration)?
        if mode == Configuration.Synchronous.normal.rawValue {
            gatherDelay = nil
        } else {
            gatherDelay = { min($0, .milliseconds(10)) }
        }
        return GroupCommit(
            gatherDelay: gatherDelay,
            schedule: { work in writer.asyncWriteWithoutTransaction { db in work(db) } },
            transaction: { db, writes in
                begin?()
                do {
                    try synchronous.transaction(mode, db) { try writes() }
                } catch {
                    throw mapError(error, path: path, action: action)
                }
            },
            append: { db, items in
                do {
                    return try body(db, items)
                } catch {
                    throw mapError(error, path: path, action: action)
                }
            })
    }

    deinit {
        if let ownedDirectory {
            try? FileManager.default.removeItem(at: ownedDirectory)
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
        let base = (try? FileManager.default.url(
            for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: false))
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent("Library/Application Support")
        let folder = Bundle.main.bundleIdentifier ?? "swift-background-sync"
        return base.appendingPathComponent(folder).appendingPathComponent("background-sync.sqlite").path
        #else
        let environment = ProcessInfo.processInfo.environment
        let base: URL
        if let xdg = environment["XDG_DATA_HOME"], xdg.hasPrefix("/") {
            base = URL(fileURLWithPath: xdg)
        } else {
            base = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".local/share")
        }
        return base.appendingPathComponent("swift-background-sync/background-sync.sqlite").path
        #endif
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

    // MARK: - Opening

    private static func grdbConfiguration(_ configuration: Configuration) -> GRDB.Configuration {
        var config = GRDB.Configuration()
        config.busyMode = .timeout(configuration.busyTimeout.timeInterval)
        config.label = "BackgroundSync"
        let synchronous = configuration.synchronous.rawValue
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
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
        close(fd)
    }

    /// Checks, read-only, that an existing file is a SQLite database whose schema this version
    /// knows, so that a wrong or newer file is reported without being modified.
    private static func checkExistingFile(at path: String, configuration: GRDB.Configuration) throws {
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
            let queue = try DatabaseQueue(path: path, configuration: readOnly)
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

    static func mapError(_ error: any Error, path: String, action: String) -> BackgroundSyncError {
        if let error = error as? BackgroundSyncError { return error }
        if let error = error as? DatabaseError {
            switch error.resultCode {
            case .SQLITE_NOTADB:
                return BackgroundSyncError(.notADatabase, "'\(path)' is not a SQLite database")
            case .SQLITE_CORRUPT:
                return BackgroundSyncError(.storage, "'\(path)' is corrupt (\(error.message ?? "malformed"))")
            case .SQLITE_FULL:
                return BackgroundSyncError(.storage, "cannot \(action) '\(path)': the disk is full")
            case .SQLITE_BUSY, .SQLITE_LOCKED:
                return BackgroundSyncError(.storage, "cannot \(action) '\(path)': the database is locked by another process")
            case .SQLITE_READONLY, .SQLITE_PERM, .SQLITE_CANTOPEN:
                return BackgroundSyncError(
                    .storage, "cannot \(action) '\(path)': \(error.message ?? "permission denied")")
            default:
                return BackgroundSyncError(
                    .storage, "cannot \(action) '\(path)': \(error.message ?? "\(error.resultCode)")")
            }
        }
        return BackgroundSyncError(.storage, "cannot \(action) '\(path)'", underlying: error)
    }

    // MARK: - Schema

    static let migrator: DatabaseMigrator = {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE queue (
                    name TEXT PRIMARY KEY NOT NULL,
                    headPosition INTEGER NOT NULL DEFAULT 1,
                    tailPosition INTEGER NOT NULL DEFAULT 0,
                    pendingCount INTEGER NOT NULL DEFAULT 0,
                    deadCount INTEGER NOT NULL DEFAULT 0,
                    leaseOwner TEXT,
                    leaseExpiresAt DOUBLE
                );
                CREATE TABLE entry (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    queueName TEXT NOT NULL REFERENCES queue(name),
                    position INTEGER NOT NULL,
                    url TEXT NOT NULL,
                    method TEXT NOT NULL,
                    headers TEXT NOT NULL,
                    body BLOB,
                    settings TEXT,
                    timestamp DOUBLE NOT NULL,
                    metadata TEXT,
                    state TEXT NOT NULL DEFAULT 'pending',
                    attempts INTEGER NOT NULL DEFAULT 0,
                    nextAttemptAt DOUBLE,
                    leaseOwner TEXT,
                    leaseExpiresAt DOUBLE,
                    lastStatus INTEGER,
                    lastError TEXT,
                    lastResponseExcerpt BLOB,
                    idempotencyKey TEXT
                );
                CREATE INDEX entry_order ON entry(queueName, state, position);
                CREATE TABLE syncRegistration (
                    tag TEXT PRIMARY KEY NOT NULL,
                    registeredAt DOUBLE NOT NULL
                );
                CREATE TRIGGER entry_inserted AFTER INSERT ON entry BEGIN
                    UPDATE queue SET
                        pendingCount = pendingCount + (NEW.state = 'pending'),
                        deadCount = deadCount + (NEW.state = 'dead')
                    WHERE name = NEW.queueName;
                END;
                CREATE TRIGGER entry_deleted AFTER DELETE ON entry BEGIN
                    UPDATE queue SET
                        pendingCount = pendingCount - (OLD.state = 'pending'),
                        deadCount = deadCount - (OLD.state = 'dead')
                    WHERE name = OLD.queueName;
                END;
                CREATE TRIGGER entry_state_changed AFTER UPDATE OF state ON entry
                WHEN OLD.state <> NEW.state BEGIN
                    UPDATE queue SET
                        pendingCount = pendingCount + (NEW.state = 'pending') - (OLD.state = 'pending'),
                        deadCount = deadCount + (NEW.state = 'dead') - (OLD.state = 'dead')
                    WHERE name = NEW.queueName;
                END;
                """)
        }
        migrator.registerMigration("v2-sealed-secrets") { db in
            try db.execute(sql: "ALTER TABLE entry ADD COLUMN sealedSecrets BLOB")
        }
        // The insert trigger moves the queue's ends past each new entry, so a push reads the ends
        // once and writes the entry, instead of also updating the queue row itself. A version
        // that still updates the ends before inserting finds them already moved (the trigger's
        // `max`/`min` changes nothing then): the two can share a database.
        migrator.registerMigration("v3-ends-by-trigger") { db in
            try db.execute(sql: """
                DROP TRIGGER entry_inserted;
                CREATE TRIGGER entry_inserted AFTER INSERT ON entry BEGIN
                    UPDATE queue SET
                        pendingCount = pendingCount + (NEW.state = 'pending'),
                        deadCount = deadCount + (NEW.state = 'dead'),
                        headPosition = min(headPosition, NEW.position),
                        tailPosition = max(tailPosition, NEW.position)
                    WHERE name = NEW.queueName;
                END;
                """)
        }
        return migrator
    }()

    // MARK: - Access

    /// Runs `body` in a transaction on the writer. `durable: false` is for replay bookkeeping
    /// (leases, deletions of delivered entries, retry counts): it does not wait for the disk.
    private func write<T: Sendable>(
        _ action: String, durable: Bool = true, _ body: @escaping @Sendable (Database) throws -> T
    ) async throws -> T {
        let synchronous = synchronous
        let mode = durable ? synchronous.durable : synchronous.bookkeeping
        do {
            if !durable {
                return try Self.writeBlocking(writer) { db in
                    try synchronous.transaction(mode, db) { try body(db) }
                }
            }
            return try await writer.writeWithoutTransaction { db in
                try synchronous.transaction(mode, db) { try body(db) }
            }
        } catch {
            throw Self.mapError(error, path: path, action: action)
        }
    }

    /// GRDB's blocking write (the async overload would be chosen in an async context).
    private static func writeBlocking<T>(_ writer: any DatabaseWriter, _ body: (Database) throws -> T) throws -> T {
        try writer.writeWithoutTransaction(body)
    }

    private func read<T: Sendable>(_ action: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await writer.read(body)
        } catch {
            throw Self.mapError(error, path: path, action: action)
        }
    }

    // MARK: - QueueDatabase

    public func insertEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, at end: QueueEnd, registeringSyncTag syncTag: String?
    ) async throws -> InsertedEntry {
        try await inserts.submit(PendingInsert(row: try EntryRow(entry), queueName: queueName, end: end, syncTag: syncTag))
    }

    /// A queue's ends and pending count as the open transaction leaves them.
    struct QueueEnds {
        /// The lowest position taken (the next entry unshifted goes just before).
        var head: Int64
        /// The highest position taken (the next entry pushed goes just after).
        var tail: Int64
        var pendingCount: Int
    }

    /// The ends of the queues that the open insert transaction wrote to, so that the writes
    /// appended to it later need not read them again. Used on the writer only, one transaction at a
    /// time; emptied when a transaction begins.
    typealias OpenEnds = Locked<[String: QueueEnds]>

    /// Inserts a batch of entries in the current transaction; returns, in batch order, each one's
    /// id and the queue's pending count once it is in.
    ///
    /// At the tail the entries follow each other in batch order; at the head the last one of the
    /// batch comes first, as if unshifted one by one. A queue's ends are read once per
    /// transaction (its row is created if needed), then kept in `openEnds`; the insert trigger
    /// moves them in the database.
    static func insert(_ batch: [PendingInsert], _ db: Database, openEnds: OpenEnds) throws -> [InsertedEntry] {
        let insertEntry = try db.cachedStatement(sql: """
            INSERT INTO entry(queueName, position, url, method, headers, body, settings, timestamp, metadata,
                idempotencyKey, sealedSecrets)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        var results: [InsertedEntry] = []
        results.reserveCapacity(batch.count)
        for item in batch {
            var ends = try openEnds.withLock({ $0[item.queueName] }) ?? readEnds(of: item.queueName, db)
            let position: Int64
            if item.end == .tail {
                ends.tail += 1
                position = ends.tail
            } else {
                ends.head -= 1
                position = ends.head
            }
            let row = item.row
            try insertEntry.execute(arguments: [
                item.queueName, position, row.url, row.method, row.headers, row.body, row.settings,
                row.timestamp, row.metadata, row.idempotencyKey, row.sealedSecrets,
            ])
            ends.pendingCount += 1
            results.append(InsertedEntry(id: db.lastInsertedRowID, queueSize: ends.pendingCount))
            openEnds.withLock { $0[item.queueName] = ends }
        }
        return results
    }

    /// Reads a queue's ends, creating its row the first time.
    private static func readEnds(of queueName: String, _ db: Database) throws -> QueueEnds {
        let select = try db.cachedStatement(sql: "SELECT headPosition, tailPosition, pendingCount FROM queue WHERE name = ?")
        if let row = try Row.fetchOne(select, arguments: [queueName]) {
            return QueueEnds(head: try row.decode(atIndex: 0), tail: try row.decode(atIndex: 1), pendingCount: try row.decode(atIndex: 2))
        }
        try db.cachedStatement(sql: "INSERT INTO queue(name) VALUES (?)").execute(arguments: [queueName])
        // The columns' defaults: nothing taken yet on either side of position 1.
        return QueueEnds(head: 1, tail: 0, pendingCount: 0)
    }

    public func removeEntry(queueName: String, from end: QueueEnd) async throws -> QueueStoreEntry? {
        let now = Date().timeIntervalSince1970
        return try await write("remove from") { db in
            let order = end == .head ? "ASC" : "DESC"
            guard let row = try Row.fetchOne(try db.cachedStatement(sql: """
                    SELECT \(EntryColumn.list) FROM entry WHERE queueName = ? AND state = 'pending'
                    AND (leaseExpiresAt IS NULL OR leaseExpiresAt < ?)
                    ORDER BY position \(order) LIMIT 1
                    """),
                arguments: [queueName, now])
            else { return nil }
            let entry = try Self.decode(row)
            try db.cachedStatement(sql: "DELETE FROM entry WHERE id = ?").execute( arguments: [entry.id])
            return entry
        }
    }

    public func entries(queueName: String, state: EntryState) async throws -> [QueueStoreEntry] {
        try await read("read") { db in
            let rows = try Row.fetchAll(try db.cachedStatement(sql: "SELECT \(EntryColumn.list) FROM entry WHERE queueName = ? AND state = ? ORDER BY position"),
                arguments: [queueName, state.rawValue])
            return try rows.map(Self.decode)
        }
    }

    public func entry(id: Int64) async throws -> QueueStoreEntry? {
        try await read("read") { db in
            try Row.fetchOne(try db.cachedStatement(sql: "SELECT \(EntryColumn.list) FROM entry WHERE id = ?"), arguments: [id]).map(Self.decode)
        }
    }

    public func countEntries(queueName: String, state: EntryState) async throws -> Int {
        let column = state == .pending ? "pendingCount" : "deadCount"
        return try await read("read") { db in
            try Int.fetchOne(try db.cachedStatement(sql: "SELECT \(column) FROM queue WHERE name = ?"), arguments: [queueName]) ?? 0
        }
    }

    @discardableResult
    public func deleteEntries(ids: [Int64]) async throws -> Int {
        if ids.isEmpty { return 0 }
        return try await write("delete from") { db in try Self.deleteEntries(ids, db) }
    }

    /// Deletes entries by id in the open transaction; returns how many existed.
    @discardableResult
    private static func deleteEntries(_ ids: [Int64], _ db: Database) throws -> Int {
        guard !ids.isEmpty else { return 0 }
        let delete = try db.cachedStatement(sql: "DELETE FROM entry WHERE id = ?")
        var deleted = 0
        for id in ids {
            try delete.execute(arguments: [id])
            deleted += db.changesCount
        }
        return deleted
    }

    public func queueNames() async throws -> [String] {
        try await read("read") { db in
            try String.fetchAll(db, sql: "SELECT name FROM queue ORDER BY name")
        }
    }

    public func queueSummaries() async throws -> [QueueSummary] {
        try await read("read") { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT name, pendingCount, deadCount,
                        (SELECT MIN(timestamp) FROM entry WHERE queueName = queue.name AND state = 'pending') AS oldest
                    FROM queue ORDER BY name
                    """)
            return rows.map { row in
                let oldest: Double? = row["oldest"]
                return QueueSummary(
                    name: row["name"], pending: row["pendingCount"], dead: row["deadCount"],
                    oldestPendingTimestamp: oldest.map(Date.init(timeIntervalSince1970:)))
            }
        }
    }

    @discardableResult
    public func deleteEntries(queueName: String?, state: EntryState?) async throws -> Int {
        var conditions: [String] = []
        var arguments: StatementArguments = []
        if let queueName {
            conditions.append("queueName = ?")
            arguments += [queueName]
        }
        if let state {
            conditions.append("state = ?")
            arguments += [state.rawValue]
        }
        let filter = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        return try await write("delete from") { [arguments] db in
            try db.execute(sql: "DELETE FROM entry" + filter, arguments: arguments)
            return db.changesCount
        }
    }

    public func claimHead(queueName: String, owner: LeaseOwner, leaseDuration: Duration, now: Date) async throws -> ClaimResult {
        let claim = try await completeClaimsAndClaimHead(
            completing: [], current: nil, owner: owner, queueName: queueName, limit: 1, leaseDuration: leaseDuration, now: now)
        if let entry = claim.entries.first { return .claimed(entry) }
        if let busy = claim.busy { return .busy(owner: busy.owner, until: busy.until) }
        return .empty
    }

    public func completeClaimsAndClaimHead(
        completing: [Int64], current: Int64?, owner: LeaseOwner, queueName: String, limit: Int,
        leaseDuration: Duration, now: Date
    ) async throws -> HeadClaim {
        let (nowSeconds, expiry, ownerValue) = (now.timeIntervalSince1970, now.timeIntervalSince1970 + leaseDuration.timeInterval, owner.rawValue)
        return try await write("claim from", durable: false) { db in
            try Self.deleteEntries(completing, db)
            var claim = HeadClaim(entries: [], busy: nil)
            let head = try db.cachedStatement(sql: """
                SELECT \(EntryColumn.list) FROM entry WHERE queueName = ?1 AND state = 'pending' AND id IS NOT ?2
                ORDER BY position LIMIT ?3
                """)
            var leased = Set<Int64>()
            scan: while claim.entries.count < limit {
                // Rows are read in place; a lease changes no indexed column, so the scan goes on.
                let cursor = try Row.fetchCursor(head, arguments: [queueName, current, limit + leased.count])
                while claim.entries.count < limit, let row = try cursor.next() {
                    let id: Int64 = try row.decode(atIndex: EntryColumn.id.rawValue)
                    if leased.contains(id) { continue }
                    if let lease = Self.liveLease(row, now: nowSeconds), lease.holder != ownerValue {
                        // Order is kept: nothing past an entry another replayer holds.
                        if claim.entries.isEmpty {
                            claim.busy = (lease.holder, Date(timeIntervalSince1970: lease.until))
                        }
                        break scan
                    }
                    // An unreadable row is set aside (its state changes, an indexed column): scan again.
                    guard let entry = try Self.lease(row, to: ownerValue, until: expiry, db) else { continue scan }
                    claim.entries.append(entry)
                    leased.insert(id)
                }
                break
            }
            return claim
        }
    }

    public func abandonClaims(ids: [Int64], owner: LeaseOwner) async throws {
        guard !ids.isEmpty else { return }
        let ownerValue = owner.rawValue
        try await write("update", durable: false) { db in
            let release = try db.cachedStatement(
                sql: "UPDATE entry SET leaseOwner = NULL, leaseExpiresAt = NULL WHERE id = ? AND leaseOwner = ?")
            for id in ids { try release.execute(arguments: [id, ownerValue]) }
        }
    }

    public func claimEntries(
        queueName: String, owner: LeaseOwner, limit: Int, leaseDuration: Duration, now: Date
    ) async throws -> [QueueStoreEntry] {
        try await completeClaimsAndClaimEntries(
            ids: [], owner: owner, queueName: queueName, limit: limit, leaseDuration: leaseDuration, now: now)
    }

    public func completeClaimsAndClaimEntries(
        ids: [Int64], owner: LeaseOwner, queueName: String, limit: Int, leaseDuration: Duration, now: Date
    ) async throws -> [QueueStoreEntry] {
        let nowSeconds = now.timeIntervalSince1970
        let expiry = nowSeconds + leaseDuration.timeInterval
        let ownerValue = owner.rawValue
        return try await write("claim from", durable: false) { db in
            try Self.deleteEntries(ids, db)
            guard limit > 0 else { return [] }
            var claimed: [QueueStoreEntry] = []
            // Entries leased by a live holder are skipped (our own too: those are in flight); scan a
            // bounded window past them. Rows are read in place and only until enough are leased:
            // the leases change no indexed column, so the scan goes on undisturbed.
            let window = try db.cachedStatement(sql: """
                SELECT \(EntryColumn.list) FROM entry WHERE queueName = ? AND state = 'pending'
                AND (nextAttemptAt IS NULL OR nextAttemptAt <= ?)
                ORDER BY position LIMIT ?
                """)
            scan: while claimed.count < limit {
                let cursor = try Row.fetchCursor(window, arguments: [queueName, nowSeconds, limit * 4 + 64])
                while claimed.count < limit, let row = try cursor.next() {
                    if Self.liveLease(row, now: nowSeconds) != nil { continue }
                    guard let entry = try Self.lease(row, to: ownerValue, until: expiry, db) else {
                        // An unreadable row was set aside (its state changed): scan again.
                        continue scan
                    }
                    claimed.append(entry)
                }
                break
            }
            return claimed
        }
    }

    /// The lease on a row, unless it expired or its holder is a dead process of this host.
    private static func liveLease(_ row: Row, now: Double) -> (holder: String, until: Double)? {
        // A lease that cannot be read is no lease: the entry is claimable (and set aside by
        // `lease(_:to:until:_:)` if the rest of the row is damaged too).
        guard let holder: String = try? row.decode(atIndex: EntryColumn.leaseOwner.rawValue),
            let until: Double = try? row.decode(atIndex: EntryColumn.leaseExpiresAt.rawValue), until >= now,
            !LeaseOwner.isAbandoned(holder)
        else { return nil }
        return (holder, until)
    }

    /// Leases a row's entry to `owner` and returns it. A row that cannot be decoded must neither
    /// block the queue nor vanish: it is set aside as a dead letter with the reason, and `nil` returned.
    private static func lease(_ row: Row, to owner: String, until expiry: Double, _ db: Database) throws -> QueueStoreEntry? {
        let id: Int64 = try row.decode(atIndex: EntryColumn.id.rawValue)
        let entry: QueueStoreEntry
        do {
            entry = try decode(row)
        } catch {
            try db.cachedStatement(sql: "UPDATE entry SET state = 'dead', lastError = ?, leaseOwner = NULL, leaseExpiresAt = NULL WHERE id = ?").execute(
                arguments: ["unreadable entry: \(error)", id])
            return nil
        }
        try db.cachedStatement(sql: "UPDATE entry SET leaseOwner = ?, leaseExpiresAt = ? WHERE id = ?").execute( arguments: [owner, expiry, id])
        return entry
    }

    public func headState(queueName: String) async throws -> HeadState? {
        try await read("read") { db in
            guard let row = try Row.fetchOne(try db.cachedStatement(sql: """
                    SELECT id, attempts, nextAttemptAt, lastStatus, lastError FROM entry
                    WHERE queueName = ? AND state = 'pending' ORDER BY position LIMIT 1
                    """),
                arguments: [queueName])
            else { return nil }
            let next: Double? = try? row.decode(forColumn: "nextAttemptAt")
            let status: Int? = try? row.decode(forColumn: "lastStatus")
            let error: String? = try? row.decode(forColumn: "lastError")
            return HeadState(
                id: try row.decode(forColumn: "id"), attempts: (try? row.decode(forColumn: "attempts")) ?? 0,
                nextAttemptAt: next.map(Date.init(timeIntervalSince1970:)),
                lastStatus: status, lastFailureWasTransport: status == nil && error != nil)
        }
    }

    @discardableResult
    public func requeueDeadEntries(queueName: String, ids: [Int64]?) async throws -> Int {
        try await write("update") { db in
            let reset = """
                UPDATE entry SET state = 'pending', attempts = 0, nextAttemptAt = NULL,
                leaseOwner = NULL, leaseExpiresAt = NULL
                """
            guard let ids else {
                try db.cachedStatement(sql: reset + " WHERE queueName = ? AND state = 'dead'").execute( arguments: [queueName])
                return db.changesCount
            }
            var moved = 0
            for id in ids {
                try db.cachedStatement(sql: reset + " WHERE queueName = ? AND state = 'dead' AND id = ?").execute( arguments: [queueName, id])
                moved += db.changesCount
            }
            return moved
        }
    }

    public func completeClaim(id: Int64, owner: LeaseOwner) async throws {
        try await deletes.submit(id)
    }

    public func releaseClaim(id: Int64, owner: LeaseOwner, failure: ReplayFailure, nextAttemptAt: Date?) async throws {
        let next = nextAttemptAt?.timeIntervalSince1970
        let ownerValue = owner.rawValue
        try await write("update", durable: false) { db in
            try db.cachedStatement(sql: """
                    UPDATE entry SET attempts = attempts + 1, nextAttemptAt = ?, lastStatus = ?, lastError = ?,
                    lastResponseExcerpt = ?, leaseOwner = NULL, leaseExpiresAt = NULL
                    WHERE id = ? AND (leaseOwner IS NULL OR leaseOwner = ?)
                    """).execute(
                arguments: [next, failure.status, failure.error, failure.responseExcerpt, id, ownerValue])
        }
    }

    public func deadLetterClaim(id: Int64, owner: LeaseOwner, failure: ReplayFailure) async throws {
        let ownerValue = owner.rawValue
        try await write("update") { db in
            try db.cachedStatement(sql: """
                    UPDATE entry SET state = 'dead', attempts = attempts + 1, nextAttemptAt = NULL, lastStatus = ?,
                    lastError = ?, lastResponseExcerpt = ?, leaseOwner = NULL, leaseExpiresAt = NULL
                    WHERE id = ? AND (leaseOwner IS NULL OR leaseOwner = ?)
                    """).execute(
                arguments: [failure.status, failure.error, failure.responseExcerpt, id, ownerValue])
        }
    }

    public func registerSyncTag(_ tag: String, at date: Date) async throws {
        let seconds = date.timeIntervalSince1970
        try await write("write to") { db in
            try db.cachedStatement(sql: "INSERT INTO syncRegistration(tag, registeredAt) VALUES (?, ?) ON CONFLICT(tag) DO NOTHING").execute(
                arguments: [tag, seconds])
        }
    }

    public func unregisterSyncTag(_ tag: String) async throws {
        try await write("write to") { db in
            try db.cachedStatement(sql: "DELETE FROM syncRegistration WHERE tag = ?").execute( arguments: [tag])
        }
    }

    public func syncTags() async throws -> [String] {
        try await read("read") { db in
            try String.fetchAll(db, sql: "SELECT tag FROM syncRegistration ORDER BY registeredAt, tag")
        }
    }

    // MARK: - Rows

    /// An entry encoded for its row.
    /// The writer connection's `PRAGMA synchronous`, set per transaction.
    ///
    /// Pushes, user actions (requeue, purge, delete) and dead-lettering commit with the configured
    /// mode (FULL by default: on disk before the call returns). Replay bookkeeping — leases,
    /// deleting a delivered entry, counting a failed attempt — commits with NORMAL: it survives a
    /// crash of the process, and after a power cut the last of it may be rolled back, so a request
    /// already delivered can be sent once more (with its `Idempotency-Key`). The next durable
    /// commit or checkpoint makes it durable too (a sync of the WAL covers every earlier commit).
    /// Browsers make the same trade for Workbox's deletions (IndexedDB's relaxed durability).
    final class SynchronousModes: Sendable {
        let durable: String
        let bookkeeping = Configuration.Synchronous.normal.rawValue
        /// The mode the writer connection is in; read and changed on the writer only.
        private let current: Locked<String>

        init(durable: Configuration.Synchronous) {
            self.durable = durable.rawValue
            current = Locked(durable.rawValue)
        }

        /// Sets `mode` on the writer connection if needed, then runs `body` in a transaction.
        func transaction<T>(_ mode: String, _ db: Database, _ body: () throws -> T) throws -> T {
            if current.withLock({ $0 }) != mode {
                try db.execute(sql: "PRAGMA synchronous = \(mode)")
                current.withLock { $0 = mode }
            }
            var result: T?
            try db.inTransaction {
                result = try body()
                return .commit
            }
            guard let result else { throw BackgroundSyncError(.storage, "transaction returned no result") }
            return result
        }
    }

    struct EntryRow: Sendable {
        var url: String
        var method: String
        var headers: String
        var body: Data?
        var settings: String?
        var timestamp: Double
        var metadata: String?
        var idempotencyKey: String?
        var sealedSecrets: Data?

        init(_ entry: UnidentifiedQueueStoreEntry) throws {
            let data = entry.requestData
            url = data.url
            method = data.method
            headers = FlatJSON.encode(data.headers)
            body = data.body
            let settings = RequestSettings(data)
            self.settings = settings == RequestSettings.defaults ? nil : try Self.json(settings)
            timestamp = entry.timestamp.timeIntervalSince1970
            metadata = entry.metadata.map(FlatJSON.encode)
            idempotencyKey = entry.idempotencyKey
            sealedSecrets = entry.sealedSecrets
        }

        private static func json(_ value: some Encodable) throws -> String {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            return String(decoding: try encoder.encode(value), as: UTF8.self)
        }
    }

    /// The `URLRequest` settings kept with a request; `NULL` in the row when all are defaults.
    struct RequestSettings: Codable, Equatable {
        var timeoutInterval: Double
        var cachePolicy: UInt
        var httpShouldHandleCookies: Bool
        var allowsCellularAccess: Bool
        var mainDocumentURL: String?

        static let defaults = RequestSettings(StorableRequest.RequestData(url: ""))

        init(_ data: StorableRequest.RequestData) {
            timeoutInterval = data.timeoutInterval
            cachePolicy = data.cachePolicy
            httpShouldHandleCookies = data.httpShouldHandleCookies
            allowsCellularAccess = data.allowsCellularAccess
            mainDocumentURL = data.mainDocumentURL
        }
    }

    /// The columns an entry is read from (`SELECT \(EntryColumn.list)`), in this order, so that
    /// ``decode(_:)`` reads them by index: GRDB finds a column by name by lower-casing and
    /// comparing every column's name, on every read.
    enum EntryColumn: Int, CaseIterable {
        case id, queueName, url, method, headers, body, settings, timestamp, metadata, state, attempts
        case nextAttemptAt, leaseOwner, leaseExpiresAt, lastStatus, lastError, lastResponseExcerpt
        case idempotencyKey, sealedSecrets

        static let list = allCases.map { "\($0)" }.joined(separator: ", ")
    }

    /// Reads an entry from a row of `SELECT \(EntryColumn.list)`. Every column goes through GRDB's
    /// throwing accessors, so a damaged row (a wrong type written by hand or by corruption) is an
    /// error that names the entry, never a crash.
    static func decode(_ row: Row) throws -> QueueStoreEntry {
        func value<T: DatabaseValueConvertible>(_ column: EntryColumn) throws -> T {
            try row.decode(atIndex: column.rawValue)
        }
        let id: Int64 = try value(.id)
        do {
            let headers = try FlatJSON.decode(try value(.headers))
            let settingsText: String? = try value(.settings)
            let settings = try settingsText.map { try JSONDecoder().decode(RequestSettings.self, from: Data($0.utf8)) }
                ?? RequestSettings.defaults
            let metadataText: String? = try value(.metadata)
            let metadata = try metadataText.map(FlatJSON.decode)
            let stateText: String = try value(.state)
            guard let state = EntryState(rawValue: stateText) else {
                throw BackgroundSyncError(.storage, "unknown state '\(stateText)'")
            }
            let data = StorableRequest.RequestData(
                url: try value(.url),
                method: try value(.method),
                headers: headers,
                body: try value(.body),
                timeoutInterval: settings.timeoutInterval,
                cachePolicy: settings.cachePolicy,
                httpShouldHandleCookies: settings.httpShouldHandleCookies,
                allowsCellularAccess: settings.allowsCellularAccess,
                mainDocumentURL: settings.mainDocumentURL)
            let timestamp: Double = try value(.timestamp)
            let nextAttemptAt: Double? = try value(.nextAttemptAt)
            return QueueStoreEntry(
                id: id,
                queueName: try value(.queueName),
                requestData: data,
                timestamp: Date(timeIntervalSince1970: timestamp),
                metadata: metadata,
                state: state,
                attempts: try value(.attempts),
                nextAttemptAt: nextAttemptAt.map(Date.init(timeIntervalSince1970:)),
                lastStatus: try value(.lastStatus),
                lastError: try value(.lastError),
                lastResponseExcerpt: try value(.lastResponseExcerpt),
                idempotencyKey: try value(.idempotencyKey),
                sealedSecrets: try value(.sealedSecrets))
        } catch {
            throw BackgroundSyncError(.storage, "entry \(id) cannot be read: \(error)", entryID: id)
        }
    }
}

extension Duration {
    /// The duration in seconds, as a `TimeInterval`.
    var timeInterval: TimeInterval {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
