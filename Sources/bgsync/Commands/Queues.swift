import ArgumentParser
import BackgroundSync
import BackgroundSyncDashboard
import Foundation

/// `bgsync queues`: every queue with its counts.
struct Queues: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every queue with its pending and dead-lettered entries and the oldest entry's age.",
        discussion: "Example:\n  bgsync queues --db /var/lib/app/queue.sqlite")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var output: OutputOptions

    /// A queue as `--json` prints it; every key always present.
    struct View: Encodable {
        var name: String
        var pending: Int
        var dead: Int
        @AlwaysWritten var oldestQueuedAt: Date? = nil
        @AlwaysWritten var oldestAgeSeconds: Int? = nil
    }

    func run() async throws {
        try await reportingErrors {
            let now = Date()
            let views = try await database.withDatabase(.read) { try await $0.queueSummaries() }.map { summary in
                View(
                    name: summary.name, pending: summary.size, dead: summary.deadLetterCount,
                    oldestQueuedAt: summary.headTimestamp,
                    oldestAgeSeconds: summary.headTimestamp.map { Int(now.timeIntervalSince($0)) })
            }
            if output.json { return try printJSON(views) }
            if views.isEmpty { return print("no queues") }
            print(table(
                ["QUEUE", "PENDING", "DEAD", "OLDEST"],
                views.map { ["\($0.name)", "\($0.pending)", "\($0.dead)", $0.oldestAgeSeconds.map { formatAge(Double($0)) } ?? "-"] }))
        }
    }
}
