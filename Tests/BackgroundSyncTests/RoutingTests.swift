import BackgroundSync
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Adds `X-Token: <n>`, a new n at each call, as a plugin that puts a fresh credential on would.
struct TokenPlugin: StrategyPlugin {
    let issued = Box(0)

    func requestWillFetch(_ request: URLRequest) async throws -> URLRequest {
        let token = issued.withLock { count -> Int in
            count += 1
            return count
        }
        var request = request
        request.setValue("token-\(token)", forHTTPHeaderField: "X-Token")
        return request
    }
}

@Suite("Routes, strategies and plugins (Workbox's pipeline)")
struct RoutingTests {
    private func makePlugin() throws -> BackgroundSyncPlugin {
        try BackgroundSyncPlugin(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
    }

    @Test func aFailedRequestOnAMatchingRouteIsQueuedAndReplayedWithOneKey() async throws {
        let server = try RecordingServer()
        server.respond { _, index in index == 0 ? .reset : .respond(.text("ok", status: 201)) }
        let sync = try makePlugin()
        let router = FetchRouter(routes: [FetchRoute(.post, .prefix(server.url.absoluteString), handler: NetworkOnly(plugins: [sync]))])

        let failure = await #expect(throws: StrategyFailure.self) {
            try await router.handle(postRequest(server.url, body: "hello"))
        }
        #expect(failure?.isQueued == true)
        #expect(failure?.queued.first?.queueName == sync.queue.name)
        #expect(try await sync.queue.size() == 1)
        #expect(try await sync.queue.replayRequests().delivered == 1)
        let keys = server.received.current.map { $0.headers["idempotency-key"] }
        #expect(keys.count == 2 && keys[0] != nil && keys[0] == keys[1])
    }

    @Test func requestsNoRouteMatchesAreNotQueued() async throws {
        let server = try RecordingServer()
        let url = server.url
        server.server.stop()
        let sync = try makePlugin()
        let router = FetchRouter(routes: [
            FetchRoute(.post, .urlMatching(/\/api\/.*\.json$/), handler: NetworkOnly(plugins: [sync]))
        ])
        // Wrong URL (no .json), then wrong method.
        let wrongURL = await #expect(throws: StrategyFailure.self) { try await router.handle(postRequest(url, body: "a")) }
        #expect(wrongURL?.isQueued == false)
        var get = URLRequest(url: url.appendingPathComponent("list.json"))
        get.httpMethod = "GET"
        let wrongMethod = await #expect(throws: StrategyFailure.self) { try await router.handle(get) }
        #expect(wrongMethod?.isQueued == false)
        #expect(try await sync.queue.size() == 0)

        // The matching one.
        let matching = await #expect(throws: StrategyFailure.self) {
            try await router.handle(postRequest(url.appendingPathComponent("new.json"), body: "b"))
        }
        #expect(matching?.isQueued == true)
        #expect(try await sync.queue.size() == 1)
    }

    @Test func a5xxIsAnAnswerUnlessTheStatusPluginTurnsItIntoAFailure() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("down for maintenance", status: 503)) }
        let plain = try makePlugin()
        let response = try await NetworkOnly(plugins: [plain]).handle(postRequest(server.url, body: "a"))
        #expect(response.status == 503)
        #expect(try await plain.queue.size() == 0)

        let withStatus = try makePlugin()
        let failure = await #expect(throws: StrategyFailure.self) {
            try await NetworkOnly(plugins: [StatusPlugin(), withStatus]).handle(postRequest(server.url, body: "b"))
        }
        #expect(failure?.response?.status == 503)
        #expect((failure?.underlying as? StatusPlugin.ServerError)?.status == 503)
        #expect(try await withStatus.queue.size() == 1)
    }

    @Test func requestWillFetchRunsAgainAtReplayOnTheRequestAsReceived() async throws {
        let server = try RecordingServer()
        server.respond { _, index in .respond(.text("", status: index == 0 ? 503 : 201)) }
        let tokens = TokenPlugin()
        let sync = try makePlugin()
        let strategy = NetworkOnly(plugins: [tokens, StatusPlugin(), sync])
        await #expect(throws: StrategyFailure.self) { try await strategy.handle(postRequest(server.url, body: "a")) }
        let stored = try #require(try await sync.queue.getAll().first)
        #expect(stored.request.value(forHTTPHeaderField: "X-Token") == nil, "the stored request is the one received")
        #expect(try await sync.queue.replayRequests().delivered == 1)
        #expect(server.received.current.map { $0.headers["x-token"] } == ["token-1", "token-2"])
    }

    @Test func aRefusalIsReturnedNotQueued() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("bad", status: 422)) }
        let sync = try makePlugin()
        let router = FetchRouter(routes: [FetchRoute(nil, .predicate { $0.path.hasPrefix("/api/") }, handler: NetworkOnly(plugins: [StatusPlugin(), sync]))])
        #expect(try await router.handle(postRequest(server.url, body: "x")).status == 422)
        #expect(try await sync.queue.size() == 0)
    }

    @Test func aRequestDoesNotOvertakeTheEntriesItsOrderedQueueHolds() async throws {
        let server = try RecordingServer()
        let sync = try makePlugin()
        try await sync.queue.pushRequest(postRequest(server.url, body: "first"))
        let failure = await #expect(throws: StrategyFailure.self) {
            try await NetworkOnly(plugins: [sync]).handle(postRequest(server.url, body: "second"))
        }
        #expect(failure?.underlying is QueueBehindError)
        #expect(server.received.current.isEmpty)
        #expect(try await sync.queue.replayRequests().delivered == 2)
        #expect(server.bodies == ["first", "second"])
    }

    @Test func aPluginThatThrowsInFetchDidFailCannotKeepTheRequestFromTheQueue() async throws {
        struct Failing: StrategyPlugin {
            func fetchDidFail(_ failure: FetchFailure) async throws { throw URLError(.unknown) }
        }
        let server = try RecordingServer()
        server.respond { _, _ in .reset }
        let sync = try makePlugin()
        let failure = await #expect(throws: StrategyFailure.self) {
            try await NetworkOnly(plugins: [Failing(), sync]).handle(postRequest(server.url, body: "x"))
        }
        #expect(failure?.isQueued == true, "the caller learns the entry id")
        #expect(failure?.pluginError is URLError)
        #expect(try await sync.queue.size() == 1)
    }

    @Test func aStrategyBuiltAgainDoesNotChangeWhatReplaysRun() async throws {
        let server = try RecordingServer()
        server.respond { _, index in .respond(.text("", status: index == 0 ? 503 : 201)) }
        let tokens = TokenPlugin()
        let sync = try makePlugin()
        let strategy = NetworkOnly(plugins: [tokens, StatusPlugin(), sync])
        _ = NetworkOnly(plugins: [sync])   // built elsewhere, without the token plugin
        await #expect(throws: StrategyFailure.self) { try await strategy.handle(postRequest(server.url, body: "a")) }
        #expect(try await sync.queue.replayRequests().delivered == 1)
        #expect(server.received.current.map { $0.headers["x-token"] } == ["token-1", "token-2"])
    }
}
