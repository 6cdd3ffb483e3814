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
        up = registry.makeGauge(name: "background_sync_store_up", help: "1 when the queue store could be read at the last scrape")
    }

    /// Reads the store into the gauges, then writes the registry in Prometheus' text format.
    func scrape(_ read: () async throws -> [QueueListView], now: Date) async -> String {
        do {
            let queues = try await read()
            up.set(to: 1.0)
            let names = Set(queues.map(\.name))
            let stale = gauges.withLock { gauges in
                let stale = gauges.filter { !names.contains($0.key) }
                for name in stale.keys { gauges[name] = nil }
                return Array(stale.values)
            }
            for gauge in stale {
                registry.unregisterGauge(gauge.pending)
                registry.unregisterGauge(gauge.dead)
                registry.unregisterGauge(gauge.age)
            }
            for queue in queues {
                let gauge = gauges(for: queue.name)
                gauge.pending.set(to: Double(queue.pending))
                gauge.dead.set(to: Double(queue.dead))
                gauge.age.set(to: queue.head.map { max(0, now.timeIntervalSince($0.timestamp)) } ?? 0)
            }
        } catch {
            up.set(to: 0.0)
        }
        return registry.emitToString()
    }

    private func gauges(for name: String) -> (pending: Gauge, dead: Gauge, age: Gauge) {
        gauges.withLock { gauges in
            if let existing = gauges[name] { return existing }
            let labels = [("queue", name)]
            let made = (
                pending: registry.makeGauge(name: "background_sync_store_pending", labels: labels, help: "Entries waiting for replay, as the store counts them"),
                dead: registry.makeGauge(name: "background_sync_store_dead_letters", labels: labels, help: "Dead letters, as the store counts them"),
                age: registry.makeGauge(name: "background_sync_store_oldest_age_seconds", labels: labels, help: "Age of the next entry to replay (0: empty)")
            )
            gauges[name] = made
            return made
        }
    }
}
