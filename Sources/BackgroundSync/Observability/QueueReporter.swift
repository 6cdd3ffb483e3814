import Foundation
import Logging

/// Tells the world what happens to one queue: its event streams (``Queue/events()``), its metrics
/// and its log lines, one method per happening, so that capture, replay and administration report
/// each thing the same way.
final class QueueReporter: Sendable {
    let queueName: String
    let logger: Logger
    let metrics: QueueMetrics
    /// The queue's size now, read only when someone listens.
    private let currentSize: @Sendable () async throws -> Int
    private let subscribers = Locked<[UUID: AsyncStream<QueueEvent>.Continuation]>([:])

    init(queueName: String, options: QueueOptions, currentSize: @escaping @Sendable () async throws -> Int) {
        self.queueName = queueName
        var logger = options.logger
        logger[metadataKey: "background-sync.queue"] = .string(queueName)
        self.logger = logger
        self.metrics = QueueMetrics(queueName: queueName, factory: options.metricsFactory)
        self.currentSize = currentSize
    }

    /// A new stream of the queue's events; up to 1,000 unread events are kept.
    func events() -> AsyncStream<QueueEvent> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: QueueEvent.self, bufferingPolicy: .bufferingNewest(1000))
        let id = UUID()
        subscribers.withLock { $0[id] = continuation }
        continuation.onTermination = { [subscribers] _ in
            _ = subscribers.withLock { $0.removeValue(forKey: id) }
        }
        return stream
    }

    /// Ends every stream (the queue is going away).
    func finish() {
        subscribers.withLock { $0.values.forEach { $0.finish() } }
    }

    /// Publishes an event to the subscribers and the size gauge. `size` is read when not given, and
    /// only when someone listens; a replay records the gauge once at its end.
    private func emit(_ kind: QueueEvent.Kind, entryID: Int64?, size: Int? = nil) async {
        if let size { metrics.size.record(size) }
        let listeners = subscribers.withLock { Array($0.values) }
        guard !listeners.isEmpty else { return }
        let currentSize: Int
        if let size {
            currentSize = size
        } else {
            currentSize = (try? await self.currentSize()) ?? 0
        }
        let event = QueueEvent(kind: kind, queueName: queueName, entryID: entryID, size: currentSize)
        for listener in listeners { listener.yield(event) }
    }

    func enqueued(_ pushed: PushedEntry, method: String) async {
        logger.debug("request queued", metadata: ["background-sync.entry": "\(pushed.id)", "http.method": "\(method)"])
        metrics.enqueued.increment()
        await emit(.enqueued, entryID: pushed.id, size: pushed.size)
    }

    func delivered(_ entry: QueueStoreEntry, _ response: ServerResponse) async {
        metrics.replayed.increment()
        logger.debug(
            "request replayed", metadata: ["background-sync.entry": "\(entry.id)", "http.status": "\(response.status)"])
        await emit(.replayed(response), entryID: entry.id)
    }

    func retryScheduled(_ entry: QueueStoreEntry, failure: ReplayFailure, attempts: Int, delay: Duration) async {
        metrics.retried.increment()
        logger.debug(
            "replay failed; retry scheduled",
            metadata: [
                "background-sync.entry": "\(entry.id)", "background-sync.delay": "\(delay)",
                "background-sync.failure": "\(failure.kind.rawValue)", "error": "\(failure.message)",
            ])
        await emit(.retryScheduled(delay: delay, attempts: attempts, failure: failure), entryID: entry.id)
    }

    func deadLettered(_ entryID: Int64, failure: ReplayFailure) async {
        metrics.deadLettered.increment()
        logger.info(
            "request set aside as a dead letter",
            metadata: [
                "background-sync.entry": "\(entryID)", "background-sync.failure": "\(failure.kind.rawValue)",
                "reason": "\(failure.message)",
            ])
        await emit(.deadLettered(failure), entryID: entryID)
    }

    func expired(_ entry: QueueStoreEntry) async {
        metrics.expired.increment()
        logger.info(
            "expired request removed: older than the queue's maxRetentionTime",
            metadata: [
                "background-sync.entry": "\(entry.id)",
                "background-sync.queued-at": "\(entry.timestamp)",
                "http.method": "\(entry.requestData.method)",
                "url.full": "\(entry.requestData.url)",
            ])
        await emit(.expired, entryID: entry.id)
    }

    func paused(_ entry: QueueStoreEntry, status: Int) async {
        logger.info(
            "replay paused: the server wants credentials",
            metadata: ["background-sync.entry": "\(entry.id)", "http.status": "\(status)"])
        await emit(.paused(status: status), entryID: entry.id)
    }

    func resumed() async {
        logger.info("replay resumed")
        await emit(.resumed, entryID: nil)
    }

    /// Records the size gauge and a log line once a replay that did something ended.
    func replayFinished(_ summary: ReplaySummary) async {
        guard summary != ReplaySummary() else { return }
        if let size = try? await currentSize() { metrics.size.record(size) }
        logger.debug(
            "replay finished",
            metadata: [
                "background-sync.delivered": "\(summary.delivered)",
                "background-sync.dead-lettered": "\(summary.deadLettered)",
                "background-sync.expired": "\(summary.expired)",
            ])
    }
}
