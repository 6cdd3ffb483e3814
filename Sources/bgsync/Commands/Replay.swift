import ArgumentParser
import BackgroundSync
import Foundation

/// `bgsync replay`: replays queues now.
struct Replay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay queues now, in order, and print a summary.",
        discussion: """
            Shows a progress bar on a terminal, one line per entry otherwise (with --json, one \
            document at the end). Entries are deleted only after the server answered. Exit status: \
            0 when every queue was drained, 1 when an entry that must be retried (no response, 5xx, \
            429, 401/403...) stopped a queue, 2 for bad input, 4 when the database cannot be used.

            Example:
              bgsync replay --queue posts
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var output: OutputOptions

    @Option(help: "Only this queue (default: every queue).")
    var queue: String?

    /// What the replay of one queue did, as `--json` prints it.
    struct Outcome: Encodable {
        var queue: String
        /// `drained`, `stopped` (an entry must be retried later) or `paused` (the server wants
        /// credentials).
        var result: String
        var delivered = 0
        var deadLettered = 0
        var expired = 0
        /// Pending entries left.
        var left = 0
        /// Why the replay stopped, if it did.
        @AlwaysWritten var message: String? = nil
    }

    func run() async throws {
        var outcomes: [Outcome] = []
        try await reportingErrors {
            try await database.checkThenChange { db in
                let known = try await db.queueNames()
                if let queue, !known.contains(queue) {
                    throw CLIError("no queue named '\(queue)'")
                }
                if let queue, isOutbox(queue) {
                    throw CLIError("'\(queue)' is an outbox: its records are uploaded by the app that owns it")
                }
                return queue.map { [$0] } ?? known.filter { !isOutbox($0) }
            } change: { db, names in
                for name in names {
                    outcomes.append(try await replay(name, db))
                }
            }
        }
        if output.json {
            try printJSON(outcomes)
        }
        if outcomes.contains(where: { $0.result != "drained" }) { throw ExitStatus.retryableFailure }
    }

    /// Replays one queue.
    private func replay(_ name: String, _ db: any QueueDatabase) async throws -> Outcome {
        var outcome = Outcome(queue: name, result: "drained")
        let total = try await db.countEntries(queueName: name, state: .pending)
        if total == 0 {
            if !output.json { print("\(name): nothing to replay") }
            return outcome
        }
        let progress = Progress(queue: name, total: total, bar: !output.json && isTerminal(STDERR_FILENO), quiet: output.json)
        let options = QueueOptions(
            requestDidReplay: { entry, response in
                progress.step("delivered #\(entry.id) \(entry.requestData.method) \(entry.requestData.url) → HTTP \(response.status)")
            },
            onDeadLetter: { entry in
                progress.step(
                    "dead letter #\(entry.id) \(entry.requestData.method) \(entry.requestData.url): \(entry.lastFailure?.message ?? "")")
            },
            logger: quietLogger)
        let queue = try Queue(name: name, options: options, database: db, syncManager: SyncManager(database: db))
        do {
            let summary = try await queue.replayRequests()
            (outcome.delivered, outcome.deadLettered, outcome.expired) = (summary.delivered, summary.deadLettered, summary.expired)
        } catch let error as BackgroundSyncError where error.code == .queueReplayFailed || error.code == .queuePaused {
            outcome.result = error.code == .queuePaused ? "paused" : "stopped"
            outcome.message = error.code == .queuePaused
                ? error.message
                    + "; the entry stays queued: it needs credentials a replay can send (enqueue with --store-secrets,"
                    + " or an app's requestWillReplay hook), then replay again"
                : error.message
        }
        progress.finish()
        outcome.left = try await queue.size()
        if output.json { return outcome }
        if let message = outcome.message {
            print("\(name): stopped, \(outcome.left) left: \(message)")
        } else {
            var parts = ["\(outcome.delivered) delivered"]
            if outcome.deadLettered > 0 { parts.append("\(outcome.deadLettered) dead-lettered") }
            if outcome.expired > 0 { parts.append("\(outcome.expired) expired") }
            print("\(name): drained, " + parts.joined(separator: ", "))
        }
        return outcome
    }
}

/// A progress bar on stderr (a terminal), or one line per entry on stdout.
final class Progress: @unchecked Sendable {
    // `@unchecked Sendable`: `done` is only touched under `lock`.
    private let lock = NSLock()
    private let queue: String
    private let total: Int
    private let bar: Bool
    private let quiet: Bool
    private var done = 0

    init(queue: String, total: Int, bar: Bool, quiet: Bool = false) {
        self.queue = queue
        self.total = total
        self.bar = bar
        self.quiet = quiet
    }

    func step(_ line: String) {
        let done = lock.withLock { () -> Int in
            self.done += 1
            return self.done
        }
        if quiet { return }
        guard bar else { return print("\(queue): \(line)") }
        let width = 30
        let filled = total > 0 ? min(width, done * width / total) : width
        let text = "\r\(queue) [" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            + "] \(done)/\(total)"
        FileHandle.standardError.write(Data(text.utf8))
    }

    func finish() {
        if bar { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
