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
        // Removed at the end, so the next group's `sync` does not write a million entries out.
        let fullDatabase = try SQLiteQueueDatabase(path: fullPath)
        defer { Fixtures.remove(fullDatabase, path: fullPath) }
        let emptyPath = freshPath("empty")
        let emptyDatabase = try SQLiteQueueDatabase(path: emptyPath)
        defer { Fixtures.remove(emptyDatabase, path: emptyPath) }
        let full = try Queue(name: "bench", database: fullDatabase, syncManager: SyncManager())
        let empty = try Queue(name: "bench", database: emptyDatabase, syncManager: SyncManager())

        // Both warmed up (see `EnqueueBenchmark.warmUp`), then interleaved one push each.
        let enqueue = EnqueueBenchmark(quick: quick, freshPath: freshPath)
        _ = try await enqueue.queueRate(empty, count: EnqueueBenchmark.warmUp, producers: 1)
        _ = try await enqueue.queueRate(full, count: EnqueueBenchmark.warmUp, producers: 1)
        let requests = (0..<pushes).map(EnqueueBenchmark.request)
        let (emptyRate, fullRate) = try await interleavedRates(
            count: pushes,
            { index in try await empty.pushRequest(requests[index]) },
            { index in try await full.pushRequest(requests[index]) })

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
}
