import ArgumentParser
import BackgroundSync
import Foundation

/// `bgsync replay`: replays queues now.
struct Replay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay queues now, in order, and print a summary.",
        discussion: """
            Shows a progress bar on a terminal, one line per entry otherwise. Entries are deleted \
            only after the server answered. Exit status: 0 when every queue was drained, 1 when an \
            entry that must be retried (no response, 5xx, 429, 401/403...) stopped a queue, 2 for bad input.

            Example:
              bgsync replay --queue posts
            """)

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Only this queue (default: every queue).")
    var queue: String?

    func run() async throws {
        var stopped = false
        try await reportingErrors {
            let db = try database.open(.write)
            let known = try await db.queueNames()
            if let queue, !known.contains(queue) {
                throw CLIError("no queue named '\(queue)'")
            }
            for name in queue.map({ [$0] }) ?? known {
                if try await !replay(name, db) { stopped = true }
            }
        }
        if stopped { throw ExitStatus.retryableFailure }
    }

    /// Replays one queue; returns whether it was drained.
    private func replay(_ name: String, _ db: SQLiteQueueDatabase) async throws -> Bool {
        let total = try await db.countEntries(queueName: name, state: .pending)
        if total == 0 {
            print("\(name): nothing to replay")
            return true
        }
        let progress = Progress(queue: name, total: total, bar: isTerminal(STDERR_FILENO))
        let options = QueueOptions(
            requestDidReplay: { entry, response in
                progress.step("delivered #\(entry.id) \(entry.requestData.method) \(entry.requestData.url) → HTTP \(response.status)")
            },
            onDeadLetter: { entry in
                progress.step("dead letter #\(entry.id) \(entry.requestData.method) \(entry.requestData.url): \(entry.lastError ?? "")")
            },
            logger: quietLogger)
        let queue = try Queue(name: name, options: options, database: db, syncManager: SyncManager(database: db))
        let summary: ReplaySummary
        do {
            summary = try await queue.replayRequests()
        } catch let error as BackgroundSyncError where error.code == .queueReplayFailed || error.code == .queuePaused {
            progress.finish()
            let left = try await queue.size()
            print("\(name): stopped, \(left) left: \(error.message)")
            return false
        }
        progress.finish()
        var parts = ["\(summary.delivered) delivered"]
        if summary.deadLettered > 0 { parts.append("\(summary.deadLettered) dead-lettered") }
        if summary.expired > 0 { parts.append("\(summary.expired) expired") }
        print("\(name): drained, " + parts.joined(separator: ", "))
        return true
    }
}

/// A progress bar on stderr (a terminal), or one line per entry on stdout.
final class Progress: @unchecked Sendable {
    // `@unchecked Sendable`: `done` is only touched under `lock`.
    private let lock = NSLock()
    private let queue: String
    private let total: Int
    private let bar: Bool
    private var done = 0

    init(queue: String, total: Int, bar: Bool) {
        self.queue = queue
        self.total = total
        self.bar = bar
    }

    func step(_ line: String) {
        let done = lock.withLock { () -> Int in
            self.done += 1
            return self.done
        }
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
