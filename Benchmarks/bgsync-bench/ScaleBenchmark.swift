import BackgroundSync
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// What a large queue costs: enqueue rate with a million entries waiting against an empty
/// database, and the time of `size()`.
struct ScaleBenchmark {
    let quick: Bool
    let freshPath: (String) -> String

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        let backlog = quick ? 100_000 : 1_000_000
        let pushes = quick ? 300 : 3000
        let fullPath = freshPath("backlog")
        try Fixtures.fill(path: fullPath, queue: "bench", url: "https://api.example.com/posts", count: backlog)
        let full = try Queue(name: "bench", database: try SQLiteQueueDatabase(path: fullPath), syncManager: SyncManager())
        let empty = try Queue(
            name: "bench", database: try SQLiteQueueDatabase(path: freshPath("empty")), syncManager: SyncManager())

        // Both warmed up (see `EnqueueBenchmark.warmUp`), then one push to each in turn (which goes
        // first alternates), each timed alone: the disk's drift falls on both sides alike.
        _ = try await rate(empty, pushes: EnqueueBenchmark.warmUp)
        _ = try await rate(full, pushes: EnqueueBenchmark.warmUp)
        let requests = (0..<pushes).map(EnqueueBenchmark.request)
        var (emptyTime, fullTime) = (Duration.zero, Duration.zero)
        for (index, request) in requests.enumerated() {
            let emptyFirst = index.isMultiple(of: 2)
            if emptyFirst { emptyTime += try await timed { try await empty.pushRequest(request) } }
            fullTime += try await timed { try await full.pushRequest(request) }
            if !emptyFirst { emptyTime += try await timed { try await empty.pushRequest(request) } }
        }
        let emptyRate = Double(pushes) / emptyTime.seconds
        let fullRate = Double(pushes) / fullTime.seconds

        let sizeCalls = 200
        var size = 0
        let start = ContinuousClock.now
        for _ in 0..<sizeCalls { size = try await full.size() }
        let sizeMilliseconds = (ContinuousClock.now - start).seconds * 1000 / Double(sizeCalls)
        precondition(size >= backlog)
        log(String(format: "enqueue, empty database:        %.0f entries/s", emptyRate))
        log(String(format: "enqueue, %d queued:        %.0f entries/s", backlog, fullRate))
        log(String(format: "size() with %d queued:     %.3f ms", backlog, sizeMilliseconds))
        return [
            ("enqueue_empty_per_s", emptyRate),
            ("enqueue_at_1m_per_s", fullRate),
            ("enqueue_ratio_at_1m", fullRate / emptyRate),
            ("size_ms_at_1m", sizeMilliseconds),
            ("backlog_entries", Double(backlog)),
        ]
    }

    private func rate(_ queue: Queue, pushes: Int) async throws -> Double {
        let requests = (0..<pushes).map(EnqueueBenchmark.request)
        let start = ContinuousClock.now
        for request in requests {
            try await queue.pushRequest(request)
        }
        return Double(pushes) / (ContinuousClock.now - start).seconds
    }
}
