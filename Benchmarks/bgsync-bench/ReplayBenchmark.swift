import BackgroundSync
import Foundation
import LoopbackHTTPServer
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Replay drain against a loopback server: the queue against a bare loop that sends the same
/// requests through the same transport, one at a time and 16 in flight.
struct ReplayBenchmark {
    let quick: Bool
    let freshPath: (String) -> String

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        let count = quick ? 500 : 10_000
        let server = try Fixtures.server()
        defer { server.stop() }
        let url = server.baseURL.appendingPathComponent("api/posts")
        let transport = URLSessionTransport()
        // Warm the connection pool so neither side pays for it.
        _ = try await bare(url: url, count: 50, inFlight: 16, transport: transport)

        // Nine rounds; each ratio is the median of the rounds' ratios. In a round, the bare loop
        // sends half its requests just before the queue's drain and half just after, and its rate
        // is over both halves: the loopback round trip drifts by a third over a few seconds on a
        // busy machine, and bracketing the drain cancels a steady drift instead of charging it
        // to one side. Nine rounds keep the median off a pair of bad ones.
        var rounds: [[Double]] = [[], [], [], []]
        for _ in 0..<(quick ? 3 : 9) {
            for (index, inFlight) in [(0, 1), (2, 16)] {
                let before = try await bare(url: url, count: count / 2, inFlight: inFlight, transport: transport)
                rounds[index + 1].append(try await drain(url: url, count: count, concurrency: inFlight, transport: transport))
                let after = try await bare(url: url, count: count / 2, inFlight: inFlight, transport: transport)
                rounds[index].append(2 / (1 / before + 1 / after))
            }
        }
        let (bareOrdered, queueOrdered, bareConcurrent, queueConcurrent) =
            (median(rounds[0]), median(rounds[1]), median(rounds[2]), median(rounds[3]))
        log(String(format: "bare loop, 1 in flight:         %.0f requests/s", bareOrdered))
        log(String(format: "replay, ordered:                %.0f entries/s", queueOrdered))
        log(String(format: "bare loop, 16 in flight:        %.0f requests/s", bareConcurrent))
        log(String(format: "replay, concurrent (16):        %.0f entries/s", queueConcurrent))
        return [
            ("bare_ordered_per_s", bareOrdered),
            ("replay_ordered_per_s", queueOrdered),
            ("bare_concurrent_per_s", bareConcurrent),
            ("replay_concurrent_per_s", queueConcurrent),
            ("replay_ratio_vs_bare_ordered", medianRatio(rounds[1], rounds[0])),
            ("replay_ratio_vs_bare_concurrent", medianRatio(rounds[3], rounds[2])),
        ]
    }

    /// A diagnostic (`--only=pairs`): 30 pairs of 1,000-entry drains, bare loop then queue, back to
    /// back, for each mode; the median and quartiles of the pairs' ratios. Shorter pairs than the
    /// figures' drains of 10,000 show less of the machine's drift, to compare two builds.
    func pairs(log: (String) -> Void) async throws -> [(String, Double)] {
        let server = try Fixtures.server()
        defer { server.stop() }
        let url = server.baseURL.appendingPathComponent("api/posts")
        let transport = URLSessionTransport()
        _ = try await bare(url: url, count: 50, inFlight: 16, transport: transport)
        var results: [(String, Double)] = []
        for (mode, inFlight) in [("ordered", 1), ("concurrent", 16)] {
            var ratios: [Double] = []
            var cpu: (bare: [Double], queue: [Double]) = ([], [])
            for _ in 0..<(quick ? 3 : 30) {
                let start = CPUTime.now()
                let bareRate = try await bare(url: url, count: 1000, inFlight: inFlight, transport: transport)
                cpu.bare.append(CPUTime.now().microseconds(since: start) / 1000)
                let (queueRate, queueCPU, _) = try await measuredDrain(
                    url: url, count: 1000, concurrency: inFlight, transport: transport)
                cpu.queue.append(queueCPU)
                ratios.append(queueRate / bareRate)
            }
            ratios.sort()
            let (low, middle, high) = (ratios[ratios.count / 4], ratios[ratios.count / 2], ratios[ratios.count * 3 / 4])
            log(String(format: "replay %@ / bare, pairs of 1,000: median %.3f (quartiles %.3f–%.3f); CPU per entry %.0f µs, bare %.0f µs",
                       mode, middle, low, high, median(cpu.queue), median(cpu.bare)))
            results.append(("pairs_replay_ratio_\(mode)", middle))
        }
        return results
    }

    static func request(_ url: URL, _ index: Int) -> URLRequest {
        var request = URLRequest(url: url)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue(UUID().uuidString.lowercased(), forHTTPHeaderField: "Idempotency-Key")
        request.httpBody = Data(#"{"title":"post \#(index)","content":"Lorem ipsum dolor sit amet"}"#.utf8)
        return request
    }

    /// The baseline: the same requests through the same transport, `inFlight` at a time.
    func bare(url: URL, count: Int, inFlight: Int, transport: any HTTPTransport) async throws -> Double {
        let requests = (0..<count).map { Self.request(url, $0) }
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = 0
            while next < min(inFlight, count) {
                let request = requests[next]
                group.addTask { _ = try await transport.send(request) }
                next += 1
            }
            while try await group.next() != nil {
                if next < count {
                    let request = requests[next]
                    group.addTask { _ = try await transport.send(request) }
                    next += 1
                }
            }
        }
        return Double(count) / (ContinuousClock.now - start).seconds
    }

    /// The queue: `count` entries stored beforehand, then one `replayRequests()` timed.
    func drain(url: URL, count: Int, concurrency: Int, transport: any HTTPTransport) async throws -> Double {
        try await measuredDrain(url: url, count: count, concurrency: concurrency, transport: transport).rate
    }

    /// A drain's rate, and the process's CPU time and context switches per entry while it ran.
    func measuredDrain(
        url: URL, count: Int, concurrency: Int, transport: any HTTPTransport
    ) async throws -> (rate: Double, cpuMicroseconds: Double, switches: Double) {
        let path = freshPath("drain-\(concurrency)")
        try Fixtures.fill(path: path, queue: "bench", url: url.absoluteString, count: count)
        let database = try SQLiteQueueDatabase(path: path)
        // Removed at once: the kernel would otherwise write its pages back during what runs next.
        defer { Fixtures.remove(database, path: path) }
        let queue = try Queue(
            name: "bench", options: QueueOptions(maxConcurrentReplays: concurrency),
            database: database, transport: transport, syncManager: SyncManager())
        let cpu = CPUTime.now()
        let start = ContinuousClock.now
        let summary = try await PerfControl.recording { try await queue.replayRequests() }
        let elapsed = (ContinuousClock.now - start).seconds
        let (time, switches) = CPUTime.now().perOperation(since: cpu, count: count)
        precondition(summary.delivered == count, "drained \(summary.delivered) of \(count)")
        return (Double(count) / elapsed, time, switches)
    }
}
