@testable import BackgroundSync
import BackgroundSyncTesting
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("Queue.send: try now, queue on failure")
struct SendTests {
    private func makeQueue(
        options: QueueOptions = QueueOptions(), transport: any HTTPTransport = URLSessionTransport()
    ) throws -> (Queue, SQLiteQueueDatabase) {
        let database = try SQLiteQueueDatabase.temporary()
        return (try Queue(name: uniqueQueueName(), options: options, database: database, transport: transport), database)
    }

    @Test func anAcceptedRequestIsSentNotStoredAndCarriesAKey() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("created", status: 201, headers: ["X-Id": "7"])) }
        let (queue, database) = try makeQueue()
        let result = try await queue.send(postRequest(server.url, body: "hello"))
        let response = try #require(result.response)
        #expect(response.status == 201)
        #expect(response.headers["x-id"] == "7")
        #expect(String(decoding: response.body, as: UTF8.self) == "created")
        #expect(try await database.countEntries(queueName: queue.name, state: .pending) == 0)
        let key = try #require(server.received.current.first?.headers["idempotency-key"])
        #expect(UUID(uuidString: key) != nil)
    }

    @Test func aRefusalIsTheCallersAndIsNotQueued() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text(#"{"error":"title missing"}"#, status: 422)) }
        let (queue, database) = try makeQueue()
        let result = try await queue.send(postRequest(server.url, body: "{}"))
        #expect(result.response?.status == 422)
        #expect(result.queuedEntryID == nil)
        #expect(try await database.countEntries(queueName: queue.name, state: .pending) == 0)
        #expect(try await database.countEntries(queueName: queue.name, state: .dead) == 0)
    }

    @Test func a503IsQueuedWithTheKeyOfTheFirstAttemptAndReplayedWithIt() async throws {
        let server = try RecordingServer()
        server.respond { _, index in .respond(.text(index == 0 ? "busy" : "ok", status: index == 0 ? 503 : 200)) }
        let (queue, database) = try makeQueue()
        let result = try await queue.send(postRequest(server.url, body: "post"), metadata: ["draft": "1"])
        guard case .queued(let id, .status(let response)) = result else {
            Issue.record("expected queued after a 503, got \(result)")
            return
        }
        #expect(response.status == 503)
        let stored = try #require(try await database.entry(id: id))
        #expect(stored.metadata == ["draft": "1"])
        #expect(try await queue.syncManager.getTags() == [queue.syncTag])
        #expect(try await queue.replayRequests().delivered == 1)
        let keys = server.received.current.map { $0.headers["idempotency-key"] }
        try #require(keys.count == 2)
        #expect(keys[0] != nil && keys[0] == keys[1] && keys[0] == stored.idempotencyKey)
    }

    @Test func noConnectionIsQueuedThenDeliveredWhenTheServerIsBack() async throws {
        let server = try RecordingServer()
        let port = server.server.port
        let url = server.url
        server.server.stop()
        let (queue, _) = try makeQueue()
        let result = try await queue.send(postRequest(url, body: "offline"))
        guard case .queued(_, .noResponse) = result else {
            Issue.record("expected queued for lack of a response, got \(result)")
            return
        }
        try server.server.start(port: port)
        #expect(try await queue.replayRequests().delivered == 1)
        #expect(server.bodies == ["offline"])
    }

    /// The server acts, but answers after the client gave up: the first attempt and the replay
    /// carry one key, so a server that honours it applies the request once. The first answer
    /// would come long after the client's timeout (URLSession's timer on Linux can fire seconds
    /// late on a loaded machine); the server's stop ends the wait.
    @Test func aTimedOutFirstAttemptAndItsReplayCarryOneKey() async throws {
        let server = try RecordingServer()
        server.respond { _, index in .respond(.text("ok", status: 201), delay: index == 0 ? .seconds(60) : nil) }
        let (queue, _) = try makeQueue()
        var request = postRequest(server.url, body: "slow")
        request.timeoutInterval = 1
        let result = try await queue.send(request)
        #expect(result.queuedEntryID != nil, "\(result)")
        #expect(try await queue.replayRequests().delivered == 1)
        let keys = server.received.current.map { $0.headers["idempotency-key"] }
        try #require(keys.count == 2)
        #expect(keys[0] != nil && keys[0] == keys[1])
    }

    @Test func anOrderedQueueWithEntriesWaitingDoesNotLetANewRequestOvertakeThem() async throws {
        let server = try RecordingServer()
        let (queue, _) = try makeQueue()
        try await queue.pushRequest(postRequest(server.url, body: "first"))
        let result = try await queue.send(postRequest(server.url, body: "second"))
        guard case .queued(_, .behindPendingEntries) = result else {
            Issue.record("expected queued behind the waiting entry, got \(result)")
            return
        }
        #expect(server.received.current.isEmpty)
        #expect(try await queue.replayRequests().delivered == 2)
        #expect(server.bodies == ["first", "second"])
    }

    @Test func aConcurrentQueueSendsAlthoughEntriesWait() async throws {
        let server = try RecordingServer()
        let (queue, _) = try makeQueue(options: QueueOptions(maxConcurrentReplays: 4))
        try await queue.pushRequest(postRequest(server.url, body: "waiting"))
        #expect(try await queue.send(postRequest(server.url, body: "now")).response?.status == 200)
        #expect(server.bodies == ["now"])
    }

    @Test func theKeysHeaderAndFormatAreOptions() async throws {
        let server = try RecordingServer()
        let (queue, _) = try makeQueue(
            options: QueueOptions(idempotencyKeyHeader: "X-Idempotency-Key", idempotencyKeyFormat: .structuredFieldString))
        _ = try await queue.send(postRequest(server.url, body: "a"))
        let headers = try #require(server.received.current.first?.headers)
        #expect(headers["idempotency-key"] == nil)
        let value = try #require(headers["x-idempotency-key"])
        #expect(value.hasPrefix("\"") && value.hasSuffix("\""))
        #expect(UUID(uuidString: String(value.dropFirst().dropLast())) != nil)
    }

    @Test func aRequestsOwnKeyIsKeptAndAGetGetsNone() async throws {
        let server = try RecordingServer()
        let (queue, _) = try makeQueue()
        _ = try await queue.send(postRequest(server.url, body: "a", headers: ["Idempotency-Key": "mine"]))
        _ = try await queue.send(URLRequest(url: server.url))
        let received = server.received.current
        #expect(received.map { $0.headers["idempotency-key"] } == ["mine", nil])
    }

    @Test func aRequestThatCannotBeStoredIsRefusedBeforeAnythingIsSent() async throws {
        let transport = ScriptedTransport()
        let (queue, _) = try makeQueue(transport: transport)
        var request = URLRequest(url: URL(string: "ftp://example.com/file")!)
        request.httpMethod = "PUT"
        let error = await #expect(throws: BackgroundSyncError.self) { try await queue.send(request) }
        #expect(error?.code == .invalidRequest)
        #expect(transport.requests.isEmpty)
    }

    @Test func aCancelledSendIsStoredWithItsKeyAndSaysSo() async throws {
        let transport = ScriptedTransport()
        transport.script(.hang)
        let (queue, database) = try makeQueue(transport: transport)
        let url = URL(string: "http://127.0.0.1:9/api")!
        let result = await withTaskGroup(of: SendResult?.self) { group in
            group.addTask { try? await queue.send(postRequest(url, body: "x")) }
            await transport.waitForHanging(1)
            group.cancelAll()
            return await group.next() ?? nil
        }
        guard case .queued(let id, .interrupted) = result else {
            Issue.record("expected queued as interrupted, got \(String(describing: result))")
            return
        }
        let stored = try #require(try await database.entry(id: id))
        let sentKey = transport.requests.first?.value(forHTTPHeaderField: "Idempotency-Key")
        #expect(sentKey != nil && stored.idempotencyKey == sentKey)
    }

    @Test func theFailedAttemptIsRecordedSoASyncDoesNotResendAtOnce() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("busy", status: 503, headers: ["Retry-After": "120"])) }
        let clock = ManualWallClock()
        let (queue, database) = try makeQueue(options: QueueOptions(clock: clock))
        let result = try await queue.send(postRequest(server.url, body: "x"))
        let id = try #require(result.queuedEntryID)
        let stored = try #require(try await database.entry(id: id))
        #expect(stored.attempts == 1)
        #expect(stored.lastFailure?.kind == .httpStatus && stored.lastFailure?.status == 503)
        #expect(stored.lastFailure?.responseExcerpt == Data("busy".utf8))
        let next = try #require(stored.nextAttemptAt)
        #expect(next.timeIntervalSince(clock.now) >= 119.9)
        let service = SyncService(queues: [queue], configuration: .init(connectivity: nil, clock: clock))
        try await service.runDueSyncs()
        #expect(server.received.current.count == 1, "Retry-After holds the replay back")
        #expect(abs(try #require(try await service.nextDueDate()).timeIntervalSince(next)) < 0.01)
    }

    @Test func aBodyStreamIsReadOnceAndSentWhole() async throws {
        let server = try RecordingServer()
        server.respond { _, index in .respond(.text("", status: index == 0 ? 503 : 201)) }
        let (queue, _) = try makeQueue()
        var request = URLRequest(url: server.url)
        request.httpMethod = "POST"
        request.httpBodyStream = InputStream(data: Data("streamed body".utf8))
        _ = try await queue.send(request)
        #expect(try await queue.replayRequests().delivered == 1)
        #expect(server.bodies == ["streamed body", "streamed body"])
    }

    @Test func aPausedQueueStoresWithoutTrying() async throws {
        let transport = ScriptedTransport()
        transport.script(.answer(status: 401), .answer(status: 401))
        let (queue, _) = try makeQueue(transport: transport)
        let url = URL(string: "http://127.0.0.1:9/api")!
        _ = try await queue.send(postRequest(url, body: "a"))          // 401: queued
        await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }   // 401: paused
        #expect(await queue.isPaused)
        let result = try await queue.send(postRequest(url, body: "b"))
        guard case .queued(_, .paused) = result else {
            Issue.record("expected queued while paused, got \(result)")
            return
        }
        #expect(transport.requests.count == 2)
    }
}
