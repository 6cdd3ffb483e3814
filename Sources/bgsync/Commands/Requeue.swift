import ArgumentParser
import BackgroundSync
import Foundation

/// `bgsync requeue ID | --all-dead`.
struct Requeue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Put dead letters back in their queue, at their old place, with attempts reset.",
        discussion: "Examples:\n  bgsync requeue 42\n  bgsync requeue --all-dead --queue posts")

    @OptionGroup var database: DatabaseOptions

    @Argument(help: "The dead letter's id.")
    var id: Int64?

    @Flag(help: "Requeue every dead letter (of --queue, or of every queue).")
    var allDead = false

    @Option(help: "With --all-dead: only this queue.")
    var queue: String?

    func validate() throws {
        if (id == nil) == !allDead {
            throw ValidationError("give either an entry id or --all-dead")
        }
    }

    func run() async throws {
        try await reportingErrors {
            // The queue's own requeue: moves the entries back and registers the queue's sync.
            func open(_ name: String, _ db: any QueueDatabase) throws -> Queue {
                try Queue(name: name, options: QueueOptions(logger: quietLogger), database: db)
            }
            try await database.checkThenChange { db -> [String]? in
                if let id {
                    guard let entry = try await db.entry(id: id) else { throw CLIError("no entry with id \(id)") }
                    guard entry.state == .dead else { throw CLIError("entry \(id) is not a dead letter") }
                    return [entry.queueName]
                }
                let known = try await db.queueNames()
                if let queue, !known.contains(queue) { throw CLIError("no queue named '\(queue)'") }
                return queue.map { [$0] } ?? known
            } change: { db, names in
                if let id, let name = names.first {
                    try await open(name, db).requeueDeadLetter(id: id)
                    return print("requeued entry \(id) in '\(name)'")
                }
                var total = 0
                for name in names {
                    total += try await open(name, db).requeueAllDeadLetters()
                }
                print("requeued \(total) dead letters")
            }
        }
    }
}
