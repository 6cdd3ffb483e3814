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
/// `URLSessionTransport` drain of the same entries in the same rounds.
struct AsyncHTTPClientBenchmark {
    let quick: Bool
    let freshPath: (String) -> String

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        let count = quick ? 500 : 5_000
        let server = try Fixtures.server()
        defer { server.stop() }
        let url = server.baseURL.appendingPathComponent("api/posts")
        let replay = ReplayBenchmark(quick: quick, freshPath: freshPath)
        let ahc = AsyncHTTPClientTransport()
        let session = URLSessionTransport()
        // Warm both connection pools.
        _ = try await bare(url: url, count: 50)
        _ = try await replay.bare(url: url, count: 50, inFlight: 1, transport: session)

        // As in the replay figures: the bare loop brackets the drains of each round (half before,
        // half after), and each ratio is the median of the rounds' ratios.
        var bareRates: [Double] = []
        var ahcRates: [Double] = []
        var sessionRates: [Double] = []
        for _ in 0..<(quick ? 3 : 7) {
            let before = try await bare(url: url, count: count / 2)
            ahcRates.append(try await replay.drain(url: url, count: count, concurrency: 1, transport: ahc))
            sessionRates.append(try await replay.drain(url: url, count: count, concurrency: 1, transport: session))
            let after = try await bare(url: url, count: count / 2)
            bareRates.append(2 / (1 / before + 1 / after))
        }
        log(String(format: "bare AsyncHTTPClient loop:      %.0f requests/s", median(bareRates)))
        log(String(format: "replay through AsyncHTTPClient: %.0f entries/s", median(ahcRates)))
        log(String(format: "replay through URLSession:      %.0f entries/s", median(sessionRates)))
        return [
            ("bare_ahc_per_s", median(bareRates)),
            ("replay_ahc_per_s", median(ahcRates)),
            ("replay_ahc_ratio_vs_bare_ahc", medianRatio(ahcRates, bareRates)),
            ("replay_ahc_ratio_vs_urlsession", medianRatio(ahcRates, sessionRates)),
        ]
    }

    /// The baseline: `count` POSTs through the shared client, one at a time, each body read.
    func bare(url: URL, count: Int) async throws -> Double {
        let client = AsyncHTTPClientTransport.sharedClient
        let requests = (0..<count).map { index -> HTTPClientRequest in
            let source = ReplayBenchmark.request(url, index)
            var request = HTTPClientRequest(url: url.absoluteString)
            request.method = .POST
            for (field, value) in source.allHTTPHeaderFields ?? [:] { request.headers.add(name: field, value: value) }
            request.body = .bytes(ByteBuffer(bytes: source.httpBody ?? Data()))
            return request
        }
        let start = ContinuousClock.now
        for request in requests {
            let response = try await client.execute(request, timeout: .seconds(60))
            _ = try await response.body.collect(upTo: 16 << 20)
        }
        return Double(count) / (ContinuousClock.now - start).seconds
    }
}
