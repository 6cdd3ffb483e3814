import BackgroundSync
import Foundation
import Prometheus

/// What `/metrics` adds to the process's own instruments: the store's view of every queue, read
/// at each scrape, so the figures hold for the whole store (every process and host that uses it),
/// where `background_sync_queue_size` is only what this process's queues last saw.
///
/// - `background_sync_store_pending{queue}`: entries waiting for replay;
/// - `background_sync_store_dead_letters{queue}`: dead letters;
/// - `background_sync_store_oldest_age_seconds{queue}`: the age of the next entry to replay
///   (0 when the queue is empty);
/// - `background_sync_store_up`: 1 when the store could be read, else 0 (the per-queue figures
///   then keep their last values).
final class StoreMetrics: Sendable {
    private let registry: PrometheusCollectorRegistry
    private let up: Gauge
    private let gauges = Locked<[String: (pending: Gauge, dead: Gauge, age: Gauge)]>([:])

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        up = registry.makeGauge(descriptor: MetricNameDescriptor(
            metricName: "background_sync_store_up", unitName: "", helpText: "1 when the queue store could be read at the last scrape"))
    }

    /// Reads the store into the gauges, then writes the registry in Prometheus' text format.
    func scrape(_ read: () async throws -> [QueueSummary], now: Date) async -> String {
        do {
            let queues = try await read()
            up.set(to: 1.0)
            let names = Set(queues.map(\.name))
            // Under the lock, so that a scrape running meanwhile cannot make one again in between.
            gauges.withLock { gauges in
                for (name, gauge) in gauges where !names.contains(name) {
                    registry.unregisterGauge(gauge.pending)
                    registry.unregisterGauge(gauge.dead)
                    registry.unregisterGauge(gauge.age)
                    gauges[name] = nil
                }
            }
            for queue in queues {
                let gauge = gauges(for: queue.name)
                gauge.pending.set(to: Double(queue.size))
                gauge.dead.set(to: Double(queue.deadLetterCount))
                gauge.age.set(to: queue.headTimestamp.map { max(0, now.timeIntervalSince($0)) } ?? 0)
            }
        } catch {
            up.set(to: 0.0)
        }
        return registry.emitToString()
    }

    private static var pending: MetricNameDescriptor { MetricNameDescriptor(
        metricName: "background_sync_store_pending", unitName: "", helpText: "Entries waiting for replay, as the store counts them") }
    private static var dead: MetricNameDescriptor { MetricNameDescriptor(
        metricName: "background_sync_store_dead_letters", unitName: "", helpText: "Dead letters, as the store counts them") }
    private static var age: MetricNameDescriptor { MetricNameDescriptor(
        metricName: "background_sync_store_oldest_age", unitName: "seconds", helpText: "Age of the next entry to replay (0: empty)") }

    private func gauges(for name: String) -> (pending: Gauge, dead: Gauge, age: Gauge) {
        gauges.withLock { gauges in
            if let existing = gauges[name] { return existing }
            let labels = [("queue", name)]
            let made = (
                pending: registry.makeGauge(descriptor: Self.pending, labels: labels),
                dead: registry.makeGauge(descriptor: Self.dead, labels: labels),
                age: registry.makeGauge(descriptor: Self.age, labels: labels)
            )
            gauges[name] = made
            return made
        }
    }
}
