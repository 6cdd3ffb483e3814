import ArgumentParser
import BackgroundSync
import Foundation

/// `bgsync set-aside ID`: unblocks an ordered queue without losing the request.
struct SetAside: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set-aside",
        abstract: "Set a pending entry aside as a dead letter, so that the entries behind it are replayed.",
        discussion: """
            For a request that can never be delivered (a host that no longer exists) at the head of \
            an ordered queue. The entry is kept with its position and can be put back with \
            `bgsync requeue ID`.

            Example:
              bgsync set-aside 42 --reason "old API host is gone"
            """)

    @OptionGroup var database: DatabaseOptions

    @Argument(help: "The pending entry's id.")
    var id: Int64

    @Option(help: "Why, recorded with the entry.")
    var reason = "set aside with bgsync"

    func run() async throws {
        try await reportingErrors {
            try await database.checkThenChange { db -> String? in
                guard let entry = try await db.entry(id: id) else { throw CLIError("no entry with id \(id)") }
                guard entry.state == .pending else { throw CLIError("entry \(id) is already a dead letter") }
                return entry.queueName
            } change: { db, queueName in
                let queue = try Queue(name: queueName, options: QueueOptions(logger: quietLogger), database: db)
                try await queue.setAside(id: id, reason: reason)
                print("set entry \(id) of '\(queueName)' aside as a dead letter")
            }
        }
    }
}
