import ArgumentParser
import BackgroundSync
import Foundation

/// `bgsync salvage --db DAMAGED --to NEW`: SQLite's `.recover`, for a queue database.
struct Salvage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy every entry that can still be read from a damaged database into a new file.",
        discussion: """
            The damaged file is opened read-only and left as it was. Entries keep their id, queue, \
            position, attempts, idempotency key and metadata. Then use the new file: pass it with \
            --db, or stop every process that has the damaged file open, move the new file over it \
            (mv, not cp) and delete the damaged file's -wal and -shm files.

            Example:
              bgsync salvage --db queue.sqlite --to queue-salvaged.sqlite
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var output: OutputOptions

    @Option(name: .customLong("to"), help: ArgumentHelp("The new database file (it must not exist).", valueName: "path"))
    var destination: String

    private struct Report: Encodable {
        var source: String
        var destination: String
        var salvaged: Int
        var unreadable: Int
        var setAside: Int
        var queues: [String]
    }

    func run() async throws {
        try await reportingErrors {
            if database.isPostgres {
                throw CLIError("salvage copies what can be read of a damaged SQLite file; a PostgreSQL store is not one")
            }
            let source = try database.checkedPath()
            guard FileManager.default.fileExists(atPath: source) else { throw CLIError("no database at '\(source)'") }
            guard !FileManager.default.fileExists(atPath: destination) else {
                throw CLIError("'\(destination)' exists: salvage writes a new file")
            }
            let report = try SQLiteQueueDatabase.salvage(from: source, to: destination)
            if output.json {
                return try printJSON(Report(
                    source: source, destination: destination, salvaged: report.salvaged, unreadable: report.unreadable,
                    setAside: report.setAside, queues: report.queues))
            }
            print("salvaged \(report.salvaged) entries of \(report.queues.count) queues into '\(destination)' "
                + "(\(report.setAside) with a garbled field, set aside as dead letters); "
                + "\(report.unreadable) could not be read; '\(source)' is left as it was")
        }
    }
}
