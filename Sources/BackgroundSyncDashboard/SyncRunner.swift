import BackgroundSync
import Foundation
import Logging

/// The syncs the dashboard's "Sync now" starts: run one after the other in the dashboard's own
/// task (a sync of a large queue outlives the request that asked for it), each as `bgsync sync`
/// runs it (the queue's sync event, its entries in order), except that no entry expires. A queue
/// asked for again while its sync waits is not queued twice. What happened last to each queue is kept for the pages.
final class SyncRunner: Sendable {
    /// The last sync of a queue, as the pages show it.
    struct Outcome: Sendable {
        enum Phase: Sendable {
            case waiting
            case running
            case succeeded(left: Int)
            case failed(String)
        }

        var phase: Phase
        var at: Date
    }

    private let database: any QueueDatabase
    private let logger: Logger
    private let requests: AsyncStream<String>
    private let input: AsyncStream<String>.Continuation
    private let state = Locked<(waiting: Set<String>, outcomes: [String: Outcome])>(([], [:]))

    init(database: any QueueDatabase, logger: Logger) {
        self.database = database
        self.logger = logger
        (requests, input) = AsyncStream.makeStream(of: String.self)
    }

    /// Asks for a sync of `name` (once, however often it is asked for before it starts).
    func request(_ name: String) {
        let isNew = state.withLock { state -> Bool in
            guard state.waiting.insert(name).inserted else { return false }
            state.outcomes[name] = Outcome(phase: .waiting, at: Date())
            return true
        }
        if isNew { input.yield(name) }
    }

    /// The last sync of each queue synced since the dashboard started.
    func outcomes() -> [String: Outcome] {
        state.withLock { $0.outcomes }
    }

    /// Runs the syncs asked for, until ``finish()`` or cancellation.
    func run() async {
        for await name in requests {
            if Task.isCancelled { break }
            state.withLock {
                $0.waiting.remove(name)
                $0.outcomes[name] = Outcome(phase: .running, at: Date())
            }
            let phase = await sync(name)
            state.withLock { $0.outcomes[name] = Outcome(phase: phase, at: Date()) }
        }
    }

    /// Ends ``run()`` once the syncs asked for so far are done.
    func finish() {
        input.finish()
    }

    /// A retention no entry reaches (a century).
    static let noExpiry = Duration.seconds(100 * 365 * 24 * 3600)

    private func sync(_ name: String) async -> Outcome.Phase {
        var quiet = logger
        quiet.logLevel = .critical
        do {
            // Nothing expires here: how long an entry may wait is the owning app's setting, which
            // the dashboard does not know; an old entry is sent, not removed.
            let options = QueueOptions(maxRetentionTime: Self.noExpiry, logger: quiet)
            let queue = try Queue(name: name, options: options, database: database)
            do {
                try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag))
                let left = try await queue.size()
                logger.info("dashboard sync succeeded", metadata: ["queue": "\(name)", "left": "\(left)"])
                return .succeeded(left: left)
            } catch let error as BackgroundSyncError where error.code == .queueReplayFailed || error.code == .queuePaused {
                logger.info("dashboard sync failed", metadata: ["queue": "\(name)", "error": "\(error.message)"])
                return .failed(error.message)
            }
        } catch {
            logger.info("dashboard sync failed", metadata: ["queue": "\(name)", "error": "\(error)"])
            return .failed("\(error)")
        }
    }
}
