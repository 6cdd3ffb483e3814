import AsyncHTTPClient
import BackgroundSync
import BackgroundSyncDashboard
import Foundation
import Logging

/// The dashboard's pages on a queue of 100,000 entries against the same pages on a queue of 10,
/// requested in turn from the two dashboards of one process: the queue list, a queue's first page,
/// and (on the large queue) a page deep in it. Pages follow positions, so their cost should not
/// depend on the queue's length. Pages of 10 entries, so that both queues fill one.
struct DashboardBenchmark {
    let quick: Bool
    let freshPath: (String) -> String

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        guard #available(macOS 14, iOS 17, tvOS 17, *) else { return [] }
        let (large, small) = (100_000, 10)
        let rounds = quick ? 50 : 400
        let largePath = freshPath("dashboard-large")
        let smallPath = freshPath("dashboard-small")
        try Fixtures.fill(path: largePath, queue: "posts", url: "https://api.example.com/posts", count: large)
        try Fixtures.fill(path: smallPath, queue: "posts", url: "https://api.example.com/posts", count: small)
        let quiet = Logger(label: "bench.dashboard") { _ in SwiftLogNoOpLogHandler() }
        let (ports, portInput) = AsyncStream.makeStream(of: Int.self)
        var dashboards: [Dashboard] = []
        for path in [largePath, smallPath] {
            dashboards.append(try Dashboard(
                database: try SQLiteQueueDatabase(path: path), configuration: .init(port: 0, pageSize: small), logger: quiet,
                onRunning: { portInput.yield($0) }))
        }
        return try await withThrowingTaskGroup(of: Void.self) { group in
            for dashboard in dashboards { group.addTask { try await dashboard.run() } }
            defer { group.cancelAll() }
            var iterator = ports.makeAsyncIterator()
            var bases: [String] = []
            for _ in dashboards {
                guard let port = await iterator.next() else { throw BenchError("a dashboard did not start") }
                bases.append("http://127.0.0.1:\(port)")
            }
            // The two servers start in either order: ask each which queue size it has.
            let firstHoldsLarge = try await get(bases[0] + "/").contains(">\(large)<")
            let (largeBase, smallBase) = firstHoldsLarge ? (bases[0], bases[1]) : (bases[1], bases[0])
            let deep = "/queue?name=posts&after=\(large - 20)"
            for path in ["/", "/queue?name=posts", deep] { _ = try await get(largeBase + path) }
            for path in ["/", "/queue?name=posts"] { _ = try await get(smallBase + path) }

            var results: [(String, Double)] = []
            for (name, path, largePath) in [
                ("list", "/", "/"), ("queue", "/queue?name=posts", "/queue?name=posts"), ("deep_page", "/queue?name=posts", deep),
            ] {
                let (smallRate, largeRate) = try await interleavedRates(
                    count: rounds, { _ in _ = try await get(smallBase + path) }, { _ in _ = try await get(largeBase + largePath) })
                log(String(format: "dashboard %@: %d entries %.0f pages/s, %d entries %.0f pages/s", name, large, largeRate, small, smallRate))
                results.append(("dashboard_\(name)_ratio_100k_vs_10", largeRate / smallRate))
            }
            return results
        }
    }

    func get(_ url: String) async throws -> String {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(30))
        guard response.status == .ok else { throw BenchError("\(url): \(response.status)") }
        return String(buffer: try await response.body.collect(upTo: 16 << 20))
    }
}
