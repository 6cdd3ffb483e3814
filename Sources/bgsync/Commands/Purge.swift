import ArgumentParser
import BackgroundSync
import Foundation

/// `bgsync purge`.
struct Purge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete entries for good: every entry, or only dead letters with --dead.",
        discussion: """
            Asks for confirmation on a terminal unless --yes is given.

            Examples:
              bgsync purge --queue posts --dead
              bgsync purge --yes
            """)

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Only this queue (default: every queue).")
    var queue: String?

    @Flag(help: "Delete only dead letters.")
    var dead = false

    @Flag(name: [.customShort("y"), .long], help: "Do not ask for confirmation.")
    var yes = false

    func run() async throws {
        try await reportingErrors {
            try await database.checkThenChange { db -> Void? in
                let summaries = try await db.queueSummaries().filter { queue == nil || $0.name == queue }
                if let queue, summaries.isEmpty { throw CLIError("no queue named '\(queue)'") }
                let count = summaries.reduce(0) { $0 + $1.deadLetterCount + (dead ? 0 : $1.size) }
                if count == 0 {
                    print("nothing to delete")
                    return nil
                }
                let what = "\(count) \(dead ? "dead letters" : "entries")" + (queue.map { " from '\($0)'" } ?? " from every queue")
                if !yes && isTerminal(STDIN_FILENO) {
                    FileHandle.standardError.write(Data("Delete \(what)? This cannot be undone. [y/N] ".utf8))
                    guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
                        print("nothing deleted")
                        return nil
                    }
                }
                return ()
            } change: { db, _ in
                let deleted = try await db.deleteEntries(queueName: queue, state: dead ? .dead : nil)
                print("deleted \(deleted) \(dead ? "dead letters" : "entries")")
            }
        }
    }
}
