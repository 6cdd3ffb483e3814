import ArgumentParser
import BackgroundSync
import BackgroundSyncDashboard
import Foundation

/// `bgsync list`: the entries of one queue or of all.
struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List entries: method, URL, age, attempts, next attempt, last status.",
        discussion: "Examples:\n  bgsync list\n  bgsync list --queue posts --dead --json")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var output: OutputOptions

    @Option(help: "Only this queue (default: every queue).")
    var queue: String?

    @Flag(help: "List dead letters instead of pending entries.")
    var dead = false

    func run() async throws {
        try await reportingErrors {
            let now = Date()
            let views = try await database.withDatabase(.read) { db in
                let known = try await db.queueNames()
                if let queue, !known.contains(queue) {
                    throw CLIError("no queue named '\(queue)'")
                }
                var views: [EntryView] = []
                for name in queue.map({ [$0] }) ?? known {
                    views += try await db.entries(queueName: name, state: dead ? .dead : .pending)
                        .map { EntryView($0, now: now, details: false) }
                }
                return views
            }
            if output.json { return try printJSON(views) }
            if views.isEmpty { return print(dead ? "no dead letters" : "no pending entries") }
            print(table(
                ["ID", "QUEUE", "METHOD", "URL", "AGE", "ATTEMPTS", "NEXT", "LAST"],
                views.map { view in
                    [
                        "\(view.id)", view.queue, view.method, view.url, formatAge(Double(view.ageSeconds)),
                        "\(view.attempts)",
                        view.nextAttemptAt.map { $0 > now ? "in " + formatAge($0.timeIntervalSince(now)) : "due" } ?? "-",
                        view.lastFailure?.short ?? "-",
                    ]
                }))
        }
    }
}
