import Metrics

/// The swift-metrics instruments of one queue, dimensioned by queue name: on the factory given in
/// ``QueueOptions/metricsFactory``, else on the app's bootstrapped backend (nothing until it
/// bootstraps one).
struct QueueMetrics: Sendable {
    let enqueued: Counter
    let replayed: Counter
    let retried: Counter
    let deadLettered: Counter
    let expired: Counter
    let size: Gauge

    init(queueName: String, factory: (any MetricsFactory)?) {
        let dimensions = [("queue", queueName)]
        let factory = factory ?? MetricsSystem.factory
        enqueued = Counter(label: "background_sync_enqueued_total", dimensions: dimensions, factory: factory)
        replayed = Counter(label: "background_sync_replayed_total", dimensions: dimensions, factory: factory)
        retried = Counter(label: "background_sync_retried_total", dimensions: dimensions, factory: factory)
        deadLettered = Counter(label: "background_sync_dead_lettered_total", dimensions: dimensions, factory: factory)
        expired = Counter(label: "background_sync_expired_total", dimensions: dimensions, factory: factory)
        size = Gauge(label: "background_sync_queue_size", dimensions: dimensions, factory: factory)
    }
}
