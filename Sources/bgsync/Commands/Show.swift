import ArgumentParser
import BackgroundSync
import BackgroundSyncDashboard
import Foundation

/// `bgsync show ID`: one entry in full, secrets masked.
struct Show: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show one entry: its request with headers (secrets masked) and body, and its replay history.",
        discussion: "Example:\n  bgsync show 42")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var output: OutputOptions

    @Argument(help: "The entry id.")
    var id: Int64

    func run() async throws {
        try await reportingErrors {
            guard let entry = try await database.withDatabase(.read, { try await $0.entry(id: id) }) else {
                throw CLIError("no entry with id \(id)")
            }
            let view = EntryView(entry, now: Date(), details: true)
            if output.json { return try printJSON(view) }
            var lines = [
                "entry \(view.id) in '\(view.queue)' (\(view.state))",
                "\(view.method) \(view.url)",
            ]
            for (name, value) in (view.headers ?? [:]).sorted(by: { $0.key < $1.key }) {
                lines.append("\(name): \(value)")
            }
            lines.append("")
            if let body = view.body {
                lines.append(body)
            } else if let bytes = view.bodyBytes {
                lines.append("(\(bytes) bytes of binary body)")
            } else {
                lines.append("(no body)")
            }
            lines.append("")
            lines.append("queued \(formatAge(Double(view.ageSeconds))) ago, \(view.attempts) failed attempts")
            if let next = view.nextAttemptAt { lines.append("next attempt at \(next)") }
            if let failure = view.lastFailure {
                lines.append("last failure (\(failure.kind)): \(failure.message)")
                if let excerpt = failure.responseExcerpt {
                    lines.append("server's answer: " + excerpt.replacingOccurrences(of: "\n", with: "\\n"))
                } else if let excerpt = failure.responseExcerptBase64 {
                    lines.append("server's answer (base64): \(excerpt)")
                }
            }
            if let key = view.idempotencyKey { lines.append("idempotency key: \(key)") }
            if let metadata = view.metadata, !metadata.isEmpty {
                lines.append("metadata: " + metadata.sorted(by: { $0.key < $1.key }).map { "\($0)=\($1)" }.joined(separator: ", "))
            }
            print(lines.joined(separator: "\n"))
        }
    }
}
