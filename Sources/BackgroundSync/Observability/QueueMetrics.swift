import Metrics

/// The swift-metrics instruments of one queue, dimensioned by queue name. They do nothing until
/// the app bootstraps a metrics backend.
struct QueueMetrics: Sendable {
    let enqueued: Counter
    let replayed: Counter
    let retried: Counter
    let deadLettered: Counter
    let expired: Counter
    let size: Gauge

    init(queueName: String) {
        let dimensions = [("queue", queueName)]
        enqueued = Counter(label: "background_sync_enqueued_total", dimensions: dimensions)
        replayed = Counter(label: "background_sync_replayed_total", dimensions: dimensions)
        retried = Counter(label: "background_sync_retried_total", dimensions: dimensions)
        deadLettered = Counter(label: "background_sync_dead_lettered_total", dimensions: dimensions)
        expired = Counter(label: "background_sync_expired_total", dimensions: dimensions)
        size = Gauge(label: "background_sync_queue_size", dimensions: dimensions)
    }
}
