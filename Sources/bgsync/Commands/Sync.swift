import ArgumentParser
import BackgroundSync
import Foundation

/// `bgsync sync --tag TAG`: what DevTools' "Sync" button does.
struct Sync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Dispatch a sync event for a tag, as DevTools' \"Sync\" button does.",
        discussion: """
            A queue's tag is background-sync:<queue name>. A sync that succeeds consumes the \
            registration; one that fails keeps it (exit status 1), unless --last-chance is given.

            Example:
              bgsync sync --tag background-sync:posts
            """)

    @OptionGroup var database: DatabaseOptions

    @Option(help: "The sync tag.")
    var tag: String

    @Flag(help: "Mark the event as the last attempt: a failure drops the registration.")
    var lastChance = false

    func run() async throws {
        var failed = false
        try await reportingErrors {
            let prefix = "background-sync:"
            let name = tag.hasPrefix(prefix) ? String(tag.dropFirst(prefix.count)) : ""
            let unknown = CLIError("no queue handles the sync tag '\(tag)' (a queue's tag is \(prefix)<queue name>)")
            guard !name.isEmpty else { throw unknown }
            guard !isOutbox(name) else {
                throw CLIError("'\(name)' is an outbox: its records are uploaded by the app that owns it")
            }
            try await database.checkThenChange { db -> Void? in
                guard try await db.queueNames().contains(name) else { throw unknown }
                return ()
            } change: { db, _ in
                let queue = try Queue(name: name, options: QueueOptions(logger: quietLogger), database: db)
                do {
                    try await queue.syncManager.dispatch(SyncEvent(tag: tag, lastChance: lastChance))
                    print("sync '\(tag)' succeeded; \(try await queue.size()) entries left")
                } catch let error as BackgroundSyncError where error.code == .queueReplayFailed || error.code == .queuePaused {
                    print("sync '\(tag)' failed: \(error.message)")
                    failed = true
                }
            }
        }
        if failed { throw ExitStatus.retryableFailure }
    }
}
