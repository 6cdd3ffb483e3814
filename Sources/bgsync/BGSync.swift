import ArgumentParser
import BackgroundSyncPostgres
import Foundation

/// `bgsync`: inspect and drive swift-background-sync queues from the command line.
@main
struct BGSync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bgsync",
        abstract: "Store HTTP requests that failed and replay them later, durably.",
        discussion: """
            bgsync works on the database of swift-background-sync queues: the SQLite file or \
            postgres:// URL given with --db, else $BGSYNC_DB, else the library's default file. Start with `bgsync demo` \
            to watch requests go offline → queued → online → delivered.

            Exit status: 0 done, 1 a retryable failure stopped the work, 2 bad input (one line on \
            stderr, the database untouched), 3 `send --fail-on-queue` queued the request, 4 the \
            database cannot be used (locked, disk full, I/O error, corrupt, newer version), \
            5 `send`: the server refused the request for good (not queued), 6 the PostgreSQL \
            server cannot be reached, refused the login or dropped the connection, 64 a usage \
            error (unknown option, missing or out-of-range value).
            """,
        version: "0.1.0",
        subcommands: [
            Enqueue.self, Send.self, Queues.self, List.self, Show.self, Replay.self, Sync.self,
            Requeue.self, SetAside.self, Delete.self, Purge.self, Salvage.self, Run.self, DashboardCommand.self, Demo.self,
        ]
    )

    /// Refuses arguments that are not UTF-8 before parsing (Swift would turn their bytes into
    /// U+FFFD, and the request stored would not be the one given), and writes an argument's
    /// control characters as escapes where ArgumentParser's messages echo it.
    static func main() async {
        if let problem = nonUTF8Argument(CommandLine.unsafeArgv, count: Int(CommandLine.argc)) {
            printError(problem)
            Foundation.exit(ExitStatus.badInput.rawValue)
        }
        if let value = getenv("BGSYNC_DB"), String(validatingCString: value) == nil {
            printError("$BGSYNC_DB is not valid UTF-8")
            Foundation.exit(ExitStatus.badInput.rawValue)
        }
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let status = exitCode(for: error)
            // Help and version go to stdout as ArgumentParser prints them.
            guard status != .success else { exit(withError: error) }
            var message = fullMessage(for: error)
            // ArgumentParser echoes a whole argument, or the value after its `=`: a database URL
            // given where none is expected (without --db) is echoed without its password.
            for argument in CommandLine.arguments.dropFirst() {
                let parts = [argument] + (argument.firstIndex(of: "=").map { [String(argument[argument.index(after: $0)...])] } ?? [])
                for part in parts {
                    let isDatabaseURL = ["postgres:", "postgresql:"].contains(where: part.lowercased().hasPrefix)
                    let shown = escapingControlCharacters(isDatabaseURL ? PostgresQueueDatabase.Configuration.redacting(part) : part)
                    if shown != part { message = message.replacingOccurrences(of: part, with: shown) }
                }
            }
            if !message.isEmpty { FileHandle.standardError.write(Data((message + "\n").utf8)) }
            Foundation.exit(status.rawValue)
        }
    }
}

/// A one-line description of the first argument (after the program's name) whose bytes are not
/// UTF-8, or `nil` when all are.
func nonUTF8Argument(_ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>, count: Int) -> String? {
    for index in 1..<max(count, 1) {
        guard let pointer = argv[index], String(validatingCString: pointer) == nil else { continue }
        let repaired = String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
        return "argument \(index) ('\(repaired)') is not valid UTF-8; give a binary body with --data-file"
    }
    return nil
}
