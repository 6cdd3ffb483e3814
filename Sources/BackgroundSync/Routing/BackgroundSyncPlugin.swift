import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The Workbox plugin that queues the requests of a strategy that fail, to replay them when the
/// queue's sync runs.
///
/// ```swift
/// let sync = try BackgroundSyncPlugin(name: "posts", options: QueueOptions(maxRetentionTime: .seconds(24 * 3600)))
/// let router = FetchRouter(routes: [
///     FetchRoute(.post, .urlMatching(/\/api\/.*\.json/), handler: NetworkOnly(plugins: [sync])),
/// ])
/// ```
///
/// As in Workbox it acts in ``fetchDidFail(_:)``: only requests that got no usable response are
/// queued (add ``StatusPlugin`` to the strategy to queue 5xx answers too). Unlike Workbox it adds
/// the idempotency key before the first attempt (so the attempt and every replay carry one key),
/// stores the request as the strategy received it, and runs the strategy's `requestWillFetch`
/// plugins again at each replay (those of the first ``NetworkOnly`` it is given to). Like
/// ``Queue/send(_:metadata:)``, it does not let a request overtake the entries its ordered queue
/// holds.
public struct BackgroundSyncPlugin: StrategyPlugin {
    /// The queue failed requests go to.
    public let queue: Queue

    /// Creates the plugin and its queue (Workbox's `new BackgroundSyncPlugin(name, options)`).
    /// - Throws: what ``Queue/init(name:options:database:transport:syncManager:)`` throws.
    public init(
        name: String, options: QueueOptions = QueueOptions(), database: (any QueueDatabase)? = nil,
        transport: any HTTPTransport = URLSessionTransport(), syncManager: SyncManager? = nil
    ) throws {
        self.queue = try Queue(name: name, options: options, database: database, transport: transport, syncManager: syncManager)
    }

    /// Creates the plugin over an existing queue.
    public init(queue: Queue) {
        self.queue = queue
    }

    /// Queues the request as the strategy received it.
    public func fetchDidFail(_ failure: FetchFailure) async throws {
        _ = try await queueFailed(failure)
    }

    /// Stores the failed request, with its failed attempt recorded (none when it was not tried);
    /// returns its entry id.
    func queueFailed(_ failure: FetchFailure) async throws -> Int64 {
        var stored = try queue.capture.capture(
            QueueEntry(request: failure.originalRequest, timestamp: queue.options.clock.now))
        // Not tried (queued behind others), or interrupted by cancellation: no attempt to count.
        let interrupted = Task.isCancelled || failure.error is CancellationError
        if !(failure.error is QueueBehindError) && !interrupted {
            queue.recordFailedAttempt(&stored, response: failure.response, error: failure.error)
        }
        return try await queue.add(captured: stored, at: .tail)
    }

    /// The request with the queue's idempotency key added (before the first attempt).
    func preparing(_ request: URLRequest) -> URLRequest {
        queue.capture.addingIdempotencyKey(to: request)
    }

    /// Why a request must be queued without being tried: the queue is paused, or ordered with
    /// entries waiting (it must not overtake them); `nil` when it may go now.
    func mustWait() async throws -> QueueBehindError? {
        if queue.control.pausedStatus != nil { return QueueBehindError(reason: .paused) }
        if queue.options.maxConcurrentReplays <= 1, try await queue.size() > 0 {
            return QueueBehindError(reason: .behindPendingEntries)
        }
        return nil
    }
}

/// The failure a ``NetworkOnly`` strategy reports when its ``BackgroundSyncPlugin``'s queue made a
/// request wait without being tried (``StrategyFailure/underlying``).
public struct QueueBehindError: Error, Sendable, CustomStringConvertible {
    /// Why: ``SendResult/QueuedReason/paused`` or ``SendResult/QueuedReason/behindPendingEntries``.
    public var reason: SendResult.QueuedReason

    public var description: String { "not tried: \(reason)" }
}

/// The seed's status plugin: turns an answer with a retryable status (5xx by default) into a
/// failure, so that a ``BackgroundSyncPlugin`` later in the list queues it.
public struct StatusPlugin: StrategyPlugin {
    /// The statuses treated as failures.
    public let failingStatuses: Set<Int>

    /// Creates the plugin. Default: every 5xx.
    public init(failingStatuses: Set<Int> = Set(500...599)) {
        self.failingStatuses = failingStatuses
    }

    /// The error thrown for a failing status.
    public struct ServerError: Error, Sendable, CustomStringConvertible {
        /// The status the server answered.
        public var status: Int
        public var description: String { "server error: HTTP \(status)" }
    }

    public func fetchDidSucceed(request: URLRequest, response: ServerResponse) async throws -> ServerResponse {
        if failingStatuses.contains(response.status) { throw ServerError(status: response.status) }
        return response
    }
}
