import Foundation
import ServiceLifecycle

/// What one call of ``Queue/replayRequests()`` did.
public struct ReplaySummary: Sendable, Hashable {
    /// Entries the server accepted (deleted).
    public var delivered = 0
    /// Entries set aside as dead letters.
    public var deadLettered = 0
    /// Entries removed because they were older than ``QueueOptions/maxRetentionTime``.
    public var expired = 0
    /// Whether a graceful shutdown stopped the replay while entries were left to send (they stay
    /// queued, and the queue's sync stays registered).
    public internal(set) var stoppedByShutdown = false

    /// Creates an empty summary.
    public init() {}

    mutating func count(_ outcome: ReplayOutcome) {
        switch outcome {
        case .delivered: delivered += 1
        case .deadLettered: deadLettered += 1
        case .expired: expired += 1
        case .givenBack, .stop: break
        }
    }
}

/// What became of one entry a replay took.
enum ReplayOutcome: Sendable {
    /// The server accepted it; it is deleted.
    case delivered(ServerResponse)
    /// Set aside as a dead letter; replay goes on.
    case deadLettered
    /// Older than the retention time; deleted and reported.
    case expired
    /// The replay was cancelled while the entry was in flight: it went back untouched.
    case givenBack
    /// Must be retried later, or the queue paused: replay stops with this error.
    case stop(BackgroundSyncError)
}

/// The state a queue's replays share with the queue: the pause a 401/403 sets.
final class ReplayControl: Sendable {
    private let paused = Locked<Int?>(nil)
    private let plugins = Locked<(attached: Bool, list: [any StrategyPlugin])>((false, []))

    /// The `requestWillFetch` plugins of the strategy the queue's ``BackgroundSyncPlugin`` serves,
    /// which run on each replayed request too.
    var requestPlugins: [any StrategyPlugin] { plugins.withLock { $0.list } }

    /// Sets ``requestPlugins`` the first time a strategy is built with the queue's plugin; later
    /// calls change nothing.
    func attachRequestPlugins(_ list: [any StrategyPlugin]) {
        plugins.withLock { plugins in
            guard !plugins.attached else { return }
            plugins = (true, list)
        }
    }

    /// The status that paused the queue, until ``resume()``.
    var pausedStatus: Int? { paused.withLock { $0 } }

    func pause(status: Int) { paused.withLock { $0 = status } }

    /// Clears the pause; returns whether the queue was paused.
    func resume() -> Bool {
        paused.withLock { status in
            defer { status = nil }
            return status != nil
        }
    }
}

/// Runs one replay of a queue, in the caller's task: takes entries from the store's
/// ``ReplayClaims``, sends each one (``replay(_:claims:)``), and gives everything it still holds
/// back at the end, whether it ran out of entries, met a failure, was asked to stop, or was
/// cancelled.
///
/// Two engines: in order (``QueueOptions/maxConcurrentReplays`` 1, ``ReplayOrder/ordered``) and
/// concurrent (``ReplayOrder/concurrent(maxInFlight:)``). Cancelling the task stops a replay after
/// the sends in flight: a send that the cancellation interrupted is given back untouched, and
/// ``run()`` throws `CancellationError`. A graceful shutdown of the service group the task runs in
/// (swift-service-lifecycle's `Task.isShuttingDownGracefully`) stops it the same way, but lets the
/// sends in flight finish and returns what was done.
struct ReplayRunner: Sendable {
    let queueName: String
    let options: QueueOptions
    let database: any QueueDatabase
    let transport: any HTTPTransport
    let owner: LeaseOwner
    let capture: RequestCapture
    let reporter: QueueReporter
    let control: ReplayControl
    let random: Locked<SystemRandomNumberGenerator>

    /// Replays the queue once; see ``Queue/replayRequests()`` for what happens to each entry.
    func run() async throws -> ReplaySummary {
        let order: ReplayOrder =
            options.maxConcurrentReplays > 1 ? .concurrent(maxInFlight: options.maxConcurrentReplays) : .ordered
        let claims = database.claims(
            queueName: queueName, order: order, owner: owner, leaseDuration: options.leaseDuration,
            clock: options.clock)
        // Stored requests sent as they are can be built by the claims ahead of their sends.
        let preparer = claims as? any PreparingReplayClaims
        if sendsStoredRequestsAsTheyAre { preparer?.prepareRequests() }
        var summary = ReplaySummary()
        let result: Result<Void, any Error>
        do {
            if case .concurrent(let limit) = order {
                try await replayConcurrently(claims, preparer: preparer, maxInFlight: limit, summary: &summary)
            } else {
                try await replayInOrder(claims, preparer: preparer, summary: &summary)
            }
            result = .success(())
        } catch {
            result = .failure(error)
        }
        // On every path: deliveries deleted, leases given back.
        let finished = await Result(catching: { try await claims.finish() })
        await reporter.replayFinished(summary)
        try result.get()
        try finished.get()
        try Task.checkCancellation()
        return summary
    }

    /// Whether nothing changes a stored request before it is sent: no `requestWillFetch` plugins,
    /// no `requestWillReplay` hook (an entry's sealed secret fields still change its own).
    var sendsStoredRequestsAsTheyAre: Bool { control.requestPlugins.isEmpty && options.requestWillReplay == nil }

    /// Whether the replay must take no more entries: cancellation, a graceful shutdown, or a pause
    /// (a 401/403 met by another send of a concurrent replay).
    var mustStop: Bool { Task.isCancelled || Task.isShuttingDownGracefully || control.pausedStatus != nil }

    func busyError(owner: String, until: Date) -> BackgroundSyncError {
        BackgroundSyncError(
            .queueReplayFailed, "the head entry is being replayed by another replayer", queueName: queueName,
            underlying: HeadHeldByAnotherReplayer(owner: owner, until: until))
    }
}

extension Result where Failure == any Error {
    /// The result of an async throwing body.
    package init(catching body: () async throws -> Success) async {
        do {
            self = .success(try await body())
        } catch {
            self = .failure(error)
        }
    }
}
