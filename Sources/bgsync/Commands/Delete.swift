import ArgumentParser
import BackgroundSync
import Foundation

/// `bgsync delete ID`: deletes one entry for good.
struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete one entry (pending or dead letter) for good.",
        discussion: """
            Asks for confirmation on a terminal unless --yes is given. To keep the request but stop \
            it from blocking its queue, use `bgsync set-aside ID` instead.

            Example:
              bgsync delete 42 --yes
            """)

    @OptionGroup var database: DatabaseOptions

    @Argument(help: "The entry's id.")
    var id: Int64

    @Flag(name: [.customShort("y"), .long], help: "Do not ask for confirmation.")
    var yes = false

    func run() async throws {
        try await reportingErrors {
            try await database.checkThenChange { db -> (entry: QueueStoreEntry, what: String)? in
                guard let entry = try await db.entry(id: id) else { throw CLIError("no entry with id \(id)") }
                let what = "\(entry.state == .dead ? "dead letter" : "pending entry") \(id) "
                    + "(\(entry.requestData.method) \(entry.requestData.url)) of '\(entry.queueName)'"
                if !yes && isTerminal(STDIN_FILENO) {
                    FileHandle.standardError.write(Data("Delete \(what)? This cannot be undone. [y/N] ".utf8))
                    guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
                        print("nothing deleted")
                        return nil
                    }
                }
                return (entry, what)
            } change: { db, found in
                let queue = try Queue(name: found.entry.queueName, options: QueueOptions(logger: quietLogger), database: db)
                if found.entry.state == .dead {
                    try await queue.deleteDeadLetter(id: id)
                } else {
                    try await queue.deletePendingEntry(id: id)
                }
                print("deleted \(found.what)")
            }
        }
    }
}
