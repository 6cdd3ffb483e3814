import ArgumentParser
import BackgroundSync
import Foundation

/// `--db PATH`, shared by every command that works on a database.
struct DatabaseOptions: ParsableArguments {
    @Option(
        name: .customLong("db"),
        help: ArgumentHelp(
            "The database file (default: $BGSYNC_DB, else the library's default file).", valueName: "path"))
    var path: String?

    /// The path in force: `--db`, then `$BGSYNC_DB`, then the library's default.
    var resolvedPath: String {
        if let path { return path }
        if let environment = ProcessInfo.processInfo.environment["BGSYNC_DB"], !environment.isEmpty {
            return environment
        }
        return SQLiteQueueDatabase.defaultPath()
    }

    /// Opens the database. Read-only commands pass `create: false`, so that a mistyped path is
    /// reported instead of creating an empty database there.
    func open(create: Bool) throws -> SQLiteQueueDatabase {
        let path = resolvedPath
        if !create && !FileManager.default.fileExists(atPath: path) {
            throw CLIError("no database at '\(path)'")
        }
        return try SQLiteQueueDatabase(path: path)
    }
}

/// `--json`, for every command that reads.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print one JSON document (an array for lists) with stable field names.")
    var json = false
}
