import AsyncHTTPClient
import BackgroundSync
import BackgroundSyncAsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Replay drain through `AsyncHTTPClientTransport` against a bare AsyncHTTPClient loop (the same
/// requests through `HTTPClient.execute`, one at a time, bodies read), and against the
/// `URLSessionTransport` drain of the same entries, in pairs after those rounds.
struct AsyncHTTPClientBenchmark {
    let quick: Bool
    let freshPath: (String) -> String

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        let count = quick ? 500 : 1_000
        let server = try Fixtures.server()
        defer { server.stop() }
        let url = server.baseURL.appendingPathComponent("api/posts")
        let replay = ReplayBenchmark(quick: quick, freshPath: freshPath)
        let ahc = AsyncHTTPClientTransport()
        _ = try await bare(url: url, count: 50)  // warms the client's connection pool

        // The bare loop brackets the drain of each round (half its requests just before, half just
        // after). Rounds are short (a drain of 1,000 entries takes about a third of a second, the
        // round about twice that), so that the machine's drift moves little within one, and many;
        // the ratio is the median of the rounds' ratios.
        var bareRates: [Double] = []
        var ahcRates: [Double] = []
        for _ in 0..<(quick ? 3 : 30) {
            let before = try await bare(url: url, count: count / 2)
            ahcRates.append(try await replay.drain(url: url, count: count, concurrency: 1, transport: ahc))
            let after = try await bare(url: url, count: count / 2)
            bareRates.append(2 / (1 / before + 1 / after))
        }
        // The URLSession comparison comes after, in pairs of one drain through each transport
        // (which goes first alternates), so that the figure's rounds hold nothing but the two
        // sides they compare.
        let session = URLSessionTransport()
        _ = try await replay.bare(url: url, count: 50, inFlight: 1, transport: session)
        var pairedAHCRates: [Double] = []
        var sessionRates: [Double] = []
        for pair in 0..<(quick ? 3 : 7) {
            if pair.isMultiple(of: 2) {
                pairedAHCRates.append(try await replay.drain(url: url, count: count, concurrency: 1, transport: ahc))
                sessionRates.append(try await replay.drain(url: url, count: count, concurrency: 1, transport: session))
            } else {
                sessionRates.append(try await replay.drain(url: url, count: count, concurrency: 1, transport: session))
                pairedAHCRates.append(try await replay.drain(url: url, count: count, concurrency: 1, transport: ahc))
            }
        }
        log(String(format: "bare AsyncHTTPClient loop:      %.0f requests/s", median(bareRates)))
        log(String(format: "replay through AsyncHTTPClient: %.0f entries/s", median(ahcRates)))
        log(String(format: "replay through URLSession:      %.0f entries/s", median(sessionRates)))
        return [
            ("bare_ahc_per_s", median(bareRates)),
            ("replay_ahc_per_s", median(ahcRates)),
            ("replay_ahc_ratio_vs_bare_ahc", medianRatio(ahcRates, bareRates)),
            ("replay_ahc_ratio_vs_urlsession", medianRatio(pairedAHCRates, sessionRates)),
        ]
    }

    /// A diagnostic (`--only=ahcpairs`): 30 rounds (3 with `--quick`) of 1,000 requests each
    /// through the bare client, through `AsyncHTTPClientTransport.send` one at a time, and as a
    /// queue's drain, the three in a rotating order; the median of the rounds' ratios to the bare
    /// loop, and each side's CPU time and context switches per request (requests built and entries
    /// stored beforehand, untimed). For profiling one side alone, `BGSYNC_BENCH_SIDE=bare`,
    /// `transport` or `drain` runs only that side, and `instant` drains 10,000 entries through a transport that answers at once: the
    /// queue's own cost per entry (with its largest lease batches, since every batch goes out fast).
    func pairs(log: (String) -> Void) async throws -> [(String, Double)] {
        let side = ProcessInfo.processInfo.environment["BGSYNC_BENCH_SIDE"]
        let server = try Fixtures.server()
        defer { server.stop() }
        let url = server.baseURL.appendingPathComponent("api/posts")
        let replay = ReplayBenchmark(quick: quick, freshPath: freshPath)
        let ahc = AsyncHTTPClientTransport()
        _ = try await bare(requests: bareRequests(url: url, count: 50))
        let count = 1000
        /// Runs one side: its rate, and its CPU time and context switches per request.
        func run(_ index: Int) async throws -> (rate: Double, cpu: Double, switches: Double) {
            switch index {
            case 0:
                let requests = bareRequests(url: url, count: count)
                let start = CPUTime.now()
                let rate = try await PerfControl.recording { try await bare(requests: requests) }
                let (time, switched) = CPUTime.now().perOperation(since: start, count: count)
                return (rate, time, switched)
            case 1:
                let stored = try (0..<count).map { try StorableRequest.fromRequest(ReplayBenchmark.request(url, $0)) }
                let (start, began) = (CPUTime.now(), ContinuousClock.now)
                try await PerfControl.recording { for request in stored { _ = try await ahc.send(request) } }
                let rate = Double(count) / (ContinuousClock.now - began).seconds
                let (time, switched) = CPUTime.now().perOperation(since: start, count: count)
                return (rate, time, switched)
            default:
                let (rate, time, switched) = try await replay.measuredDrain(url: url, count: count, concurrency: 1, transport: ahc)
                return (rate, time, switched)
            }
        }
        var rates: [[Double]] = [[], [], []]
        var cpu: [[Double]] = [[], [], []]
        var switches: [[Double]] = [[], [], []]
        for round in 0..<(quick ? 3 : 30) {
            switch side {
            case "instant":
                let (rate, drainCPU, drainSwitches) = try await replay.measuredDrain(
                    url: url, count: 10_000, concurrency: 1, transport: InstantTransport())
                log(String(format: "instant transport: %.1f µs per entry, %.1f µs of CPU, %.2f context switches",
                           1e6 / rate, drainCPU, drainSwitches))
            case "bare":
                _ = try await run(0)
            case "transport":
                _ = try await run(1)
            case "drain":
                _ = try await run(2)
            default:
                for offset in 0..<3 {
                    let index = (round + offset) % 3
                    let (rate, time, switched) = try await run(index)
                    rates[index].append(rate)
                    cpu[index].append(time)
                    switches[index].append(switched)
                }
            }
        }
        guard !rates[0].isEmpty else { return [] }
        log(String(format: "bare %.0f/s (%.0f µs CPU each), transport loop %.3f (%.0f µs), drain %.3f (%.0f µs)",
                   median(rates[0]), median(cpu[0]), medianRatio(rates[1], rates[0]), median(cpu[1]),
                   medianRatio(rates[2], rates[0]), median(cpu[2])))
        log(String(format: "context switches per request: bare %.2f, transport loop %.2f, drain %.2f",
                   median(switches[0]), median(switches[1]), median(switches[2])))
        return [
            ("ahcpairs_transport_ratio", medianRatio(rates[1], rates[0])),
            ("ahcpairs_drain_ratio", medianRatio(rates[2], rates[0])),
        ]
    }

    /// `count` POSTs for the bare loop.
    func bareRequests(url: URL, count: Int) -> [HTTPClientRequest] {
        (0..<count).map { index -> HTTPClientRequest in
            let source = ReplayBenchmark.request(url, index)
            var request = HTTPClientRequest(url: url.absoluteString)
            request.method = .POST
            for (field, value) in source.allHTTPHeaderFields ?? [:] { request.headers.add(name: field, value: value) }
            request.body = .bytes(ByteBuffer(bytes: source.httpBody ?? Data()))
            return request
        }
    }

    /// The baseline: `count` POSTs through the shared client, one at a time, each body read.
    func bare(url: URL, count: Int) async throws -> Double {
        try await bare(requests: bareRequests(url: url, count: count))
    }

    /// The requests through the shared client, one at a time, each body read; their rate.
    func bare(requests: [HTTPClientRequest]) async throws -> Double {
        let client = AsyncHTTPClientTransport.sharedClient
        let start = ContinuousClock.now
        for request in requests {
            let response = try await client.execute(request, timeout: .seconds(60))
            _ = try await response.body.collect(upTo: 16 << 20)
        }
        return Double(requests.count) / (ContinuousClock.now - start).seconds
    }
}

/// Answers every request with a 201 at once, without a network.
struct InstantTransport: HTTPTransport {
    func send(_ request: URLRequest) async throws -> ServerResponse { ServerResponse(status: 201) }
    func send(_ request: StorableRequest) async throws -> ServerResponse { ServerResponse(status: 201) }
}
