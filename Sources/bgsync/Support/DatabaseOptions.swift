import ArgumentParser
import BackgroundSync
import BackgroundSyncPostgres
import Foundation
import Logging

/// `--db PATH|URL`, shared by every command that works on a database.
struct DatabaseOptions: ParsableArguments {
    @Option(
        name: .customLong("db"),
        help: ArgumentHelp(
            "The database file, or a postgres:// URL (default: $BGSYNC_DB, else the library's default file).",
            valueName: "path|url"))
    var path: String?

    @Option(help: ArgumentHelp("Seconds to wait for another process's lock on the database.", valueName: "seconds"))
    var busyTimeout: Double = 10

    func validate() throws {
        guard busyTimeout >= 0, busyTimeout <= 3600 else {
            throw ValidationError("--busy-timeout must be between 0 and 3600 seconds")
        }
    }

    /// The path in force, once it is known to be a file path or a `postgres://` URL.
    func checkedPath() throws -> String {
        let path = resolvedPath
        if let problem = Self.notAPathOrURL(path) { throw CLIError(problem) }
        return path
    }

    /// Why a `--db` (or `$BGSYNC_DB`) value is neither a file path nor a `postgres://` URL, or
    /// `nil`. Such a value would otherwise name a SQLite file (a mistyped URL, a libpq
    /// `host=… password=…` string): created by the commands that create, and shown, password
    /// and all, in messages. The message never repeats the value.
    static func notAPathOrURL(_ value: String) -> String? {
        let lowered = value.lowercased()
        if lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://") { return nil }
        if lowered.contains("://") {
            return "the database URL must start with postgres:// or postgresql:// (no quotes or spaces around it)"
        }
        let scheme = lowered.prefix { $0 != ":" && $0 != "/" }
        if scheme.count < lowered.count, lowered.dropFirst(scheme.count).hasPrefix(":"), URLScheme.isValid(scheme) {
            return scheme.hasPrefix("postgres")
                ? "the database URL must start with postgres:// or postgresql://"
                : "--db (or $BGSYNC_DB) takes a file path or a postgres:// URL, not a \(scheme): URL (write ./NAME for a file whose name has a colon)"
        }
        let words = lowered.split(whereSeparator: \.isWhitespace)
        if words.contains(where: { word in ["host=", "hostaddr=", "dbname=", "user=", "password=", "port="].contains { word.hasPrefix($0) } }) {
            return "--db (or $BGSYNC_DB) takes a postgres:// URL, not a key=value connection string"
        }
        return nil
    }

    /// The path in force: `--db`, then `$BGSYNC_DB`, then the library's default.
    var resolvedPath: String {
        if let path { return path }
        if let environment = ProcessInfo.processInfo.environment["BGSYNC_DB"], !environment.isEmpty {
            return environment
        }
        return SQLiteQueueDatabase.defaultPath()
    }

    /// Whether the database in force is a PostgreSQL store (`postgres://` or `postgresql://`).
    var isPostgres: Bool {
        let lowered = resolvedPath.lowercased()
        return lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://")
    }

    /// Runs `body` with the database in force: a SQLite file opened for `access`, or a PostgreSQL
    /// store running for the duration of the call (its schema created or migrated on the way),
    /// logging to `logger` (the daemon's), or only its errors when `nil` (a one-shot command
    /// reports its own).
    func withDatabase<T: Sendable>(
        _ access: Access, logger: Logger? = nil, _ body: (any QueueDatabase) async throws -> T
    ) async throws -> T {
        let path = try checkedPath()
        guard isPostgres else { return try await body(try open(access)) }
        let storeLogger = logger ?? {
            var quiet = Logger(label: "bgsync.postgres")
            quiet.logLevel = .error
            return quiet
        }()
        return try await PostgresQueueDatabase.withDatabase(
            try PostgresQueueDatabase.Configuration(url: path), logger: storeLogger, body)
    }

    /// How a command uses the database.
    enum Access {
        /// Creates the file if missing (enqueue, send, run).
        case create
        /// Changes an existing database (replay, sync, requeue, purge).
        case write
        /// Only reads, and never writes a byte to the file (queues, list, show).
        case read
    }

    /// Opens the database. Commands that do not create report a missing file instead of creating
    /// an empty database at a mistyped path.
    func open(_ access: Access) throws -> SQLiteQueueDatabase {
        let path = try checkedPath()
        if access != .create && !FileManager.default.fileExists(atPath: path) {
            throw CLIError("no database at '\(path)'")
        }
        let database = try SQLiteQueueDatabase(
            path: path,
            configuration: .init(busyTimeout: .milliseconds(Int64(busyTimeout * 1000)), readOnly: access == .read))
        OpenedDatabases.closeAtExit(database)
        return database
    }
}

extension DatabaseOptions {
    /// For commands that change an existing database: runs `check` on the database opened
    /// read-only, then, unless it threw (bad input: the command refuses) or returned `nil` (nothing
    /// to do), `change` on the database opened for writing with what `check` found. Opening for
    /// writing can write to the file (SQLite's WAL set-up), so a command that refuses leaves the
    /// file's bytes as they were. A database that cannot be opened read-only (one that needs a
    /// schema upgrade) is checked on the writing connection instead.
    func checkThenChange<Found>(
        _ check: (any QueueDatabase) async throws -> Found?,
        change: (any QueueDatabase, Found) async throws -> Void
    ) async throws {
        // A PostgreSQL store has no file to leave untouched: one instance checks, then changes.
        if isPostgres {
            return try await withDatabase(.write) { db in
                if let found = try await check(db) { try await change(db, found) }
            }
        }
        let readOnly: SQLiteQueueDatabase
        do {
            readOnly = try open(.read)
        } catch let error as BackgroundSyncError where error.code == .storage && error.message.contains("needs an upgrade") {
            let db = try open(.write)
            if let found = try await check(db) { try await change(db, found) }
            return
        }
        let found = try await check(readOnly)
        // Closed before the writing connection opens: the last connection to close is then the
        // writer, which checkpoints and removes the WAL.
        try? readOnly.close()
        guard let found else { return }
        try await change(try open(.write), found)
    }
}

/// The databases a command opened, closed when the process exits, whatever the exit path
/// (ArgumentParser calls `exit` for an error status, and objects are not released then). The last
/// connection's close removes `-wal` and `-shm` when no other process has the file open: left
/// behind, they would keep the main file's permissions of the moment they were created, and
/// another user allowed to read the file could not.
enum OpenedDatabases {
    private static let lock = NSLock()
    // Safe: read and written only under `lock`.
    nonisolated(unsafe) private static var databases: [SQLiteQueueDatabase] = []

    static func closeAtExit(_ database: SQLiteQueueDatabase) {
        lock.withLock {
            if databases.isEmpty { atexit { OpenedDatabases.closeAll() } }
            databases.append(database)
        }
    }

    private static func closeAll() {
        let all = lock.withLock {
            defer { databases = [] }
            return databases
        }
        // A close that fails (a read still running) leaves the files as SQLite keeps them.
        for database in all.reversed() { try? database.close() }
    }
}

/// `--json`, for every command that reads.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print one JSON document (an array for lists) with stable field names.")
    var json = false
}

/// Whether a queue is an app's outbox (its records are uploaded by the app, not replayed here).
func isOutbox(_ queueName: String) -> Bool {
    queueName.hasPrefix(Queue.outboxNamePrefix)
}
