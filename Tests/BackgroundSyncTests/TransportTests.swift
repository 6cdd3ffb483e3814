import BackgroundSync
import BackgroundSyncAsyncHTTPClient
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The transports the library ships, put through the same exchanges with a real loopback server.
enum TransportKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case urlSession
    case asyncHTTPClient

    func make() -> any HTTPTransport {
        switch self {
        case .urlSession: URLSessionTransport()
        case .asyncHTTPClient: AsyncHTTPClientTransport()
        }
    }

    var testDescription: String { rawValue }
}

@Suite("Transports against a loopback server")
struct TransportTests {
    @Test(arguments: TransportKind.allCases)
    func bodiesAndHeaderFieldsGoThroughBothWays(_ kind: TransportKind) async throws {
        let server = try RecordingServer()
        server.respond { _, _ in
            .respond(LoopbackHTTPServer.Response(
                status: 201, headers: ["X-Custom": "yes", "Content-Type": "application/octet-stream"],
                body: Data([0, 1, 2, 255])))
        }
        var request = postRequest(server.url, body: "", headers: ["X-Trace": "abc", "Content-Type": "application/octet-stream"])
        request.httpBody = Data([255, 0, 10, 13, 128])
        let response = try await kind.make().send(request)
        #expect(response.status == 201)
        #expect(response.headers["x-custom"] == "yes")
        #expect(response.body == Data([0, 1, 2, 255]))
        let received = try #require(server.received.current.first)
        #expect(received.method == "POST")
        #expect(received.headers["x-trace"] == "abc")
        #expect(received.body == Data([255, 0, 10, 13, 128]))
    }

    /// Credentials in the URL (how `--store-secrets` keeps them for a replay) go out as Basic
    /// authentication, percent-decoded; the request target carries none of them.
    @Test(arguments: TransportKind.allCases)
    func credentialsInTheURLGoOutAsBasicAuthentication(_ kind: TransportKind) async throws {
        let server = try RecordingServer()
        let port = try #require(server.url.port)
        let url = try #require(URL(string: "http://ops%40example.com:p%3Ass%20w@127.0.0.1:\(port)/api/posts?q=1"))
        _ = try await kind.make().send(postRequest(url, body: "a"))
        let received = try #require(server.received.current.first)
        #expect(received.headers["authorization"] == "Basic " + Data("ops@example.com:p:ss w".utf8).base64EncodedString())
        #expect(received.target == "/api/posts?q=1")
    }

    @Test(arguments: TransportKind.allCases)
    func errorStatusesAreAnswersNotErrors(_ kind: TransportKind) async throws {
        let server = try RecordingServer()
        server.respond { _, index in .respond(.text("no", status: index == 0 ? 503 : 422)) }
        let transport = kind.make()
        #expect(try await transport.send(postRequest(server.url, body: "a")).status == 503)
        #expect(try await transport.send(postRequest(server.url, body: "b")).status == 422)
    }

    @Test(arguments: TransportKind.allCases)
    func aWriteIsNotRedirectedButAReadIs(_ kind: TransportKind) async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            request.path == "/api/posts"
                ? .respond(.text("moved", status: 302, headers: ["Location": "/elsewhere"]))
                : .respond(.text("here"))
        }
        let transport = kind.make()
        let write = try await transport.send(postRequest(server.url, body: "payload"))
        #expect(write.status == 302)
        #expect(server.received.current.map(\.path) == ["/api/posts"])

        let read = try await transport.send(URLRequest(url: server.url))
        #expect(read.status == 200)
        #expect(String(decoding: read.body, as: UTF8.self) == "here")
        #expect(server.received.current.map(\.path) == ["/api/posts", "/api/posts", "/elsewhere"])
    }

    @Test(arguments: TransportKind.allCases)
    func aServerThatDoesNotAnswerInTimeIsNoResponse(_ kind: TransportKind) async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .hang(.seconds(30)) }
        var request = postRequest(server.url, body: "slow")
        request.timeoutInterval = 1
        let start = ContinuousClock.now
        await #expect(throws: (any Error).self) { try await kind.make().send(request) }
        // The hang ends (the server closes) after 30 s: an error well before is the timeout. Under
        // the thread sanitizer, with the whole suite running in parallel several times slower,
        // durations say nothing, so the bound is checked in normal runs only.
        if ProcessInfo.processInfo.environment["TSAN_OPTIONS"] == nil {
            #expect(ContinuousClock.now - start < .seconds(15))
        }
    }

    @Test(arguments: TransportKind.allCases)
    func refusedAndResetConnectionsAreNoResponse(_ kind: TransportKind) async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .reset }
        let transport = kind.make()
        await #expect(throws: (any Error).self) { try await transport.send(postRequest(server.url, body: "reset")) }
        let closed = try ClosedPort()
        let refused = closed.baseURL.appendingPathComponent("api")
        await #expect(throws: (any Error).self) { try await transport.send(postRequest(refused, body: "refused")) }
        server.server.stop()
        await #expect(throws: (any Error).self) { try await transport.send(postRequest(server.url, body: "stopped")) }
        #expect(server.received.current.count == 1)
    }

    /// Cancelling a send just as its answer comes in: every call ends, with the answer or an error.
    /// FoundationNetworking's own `URLSession.data(for:)` deadlocks the process now and then here
    /// (its cancellation handler waits for the thread that is completing the task). A deadlock never
    /// ends; the limit leaves room for the thread sanitizer, under which, beside the rest of the
    /// suite, the 200 rounds take about a minute.
    @Test(.timeLimit(.minutes(3)), arguments: TransportKind.allCases)
    func cancellingSendsAsTheirAnswersArriveEndsEveryCall(_ kind: TransportKind) async throws {
        let server = try RecordingServer()
        let transport = kind.make()
        var answered = 0
        for round in 0..<200 {
            let send = Task { try await transport.send(postRequest(server.url, body: "\(round)")) }
            for _ in 0..<(round % 40) { await Task.yield() }
            try await Task.sleep(for: .microseconds(50 * (round % 7)))
            send.cancel()
            if (try? await send.value) != nil { answered += 1 }
        }
        // Every call ended (the point: no deadlock, no crash); some had their answer first.
        #expect(answered > 0)
        #expect(server.received.current.count >= answered)
    }

    @Test(arguments: TransportKind.allCases)
    func aQueueReplaysThroughTheTransport(_ kind: TransportKind) async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        let queue = try Queue(name: uniqueQueueName(), database: database, transport: kind.make())
        for index in 0..<3 { try await queue.pushRequest(postRequest(server.url, body: "post-\(index)")) }
        #expect(try await queue.replayRequests().delivered == 3)
        #expect(server.bodies == ["post-0", "post-1", "post-2"])
        let keys = Set(server.received.current.compactMap { $0.headers["idempotency-key"] })
        #expect(keys.count == 3)
    }
}
