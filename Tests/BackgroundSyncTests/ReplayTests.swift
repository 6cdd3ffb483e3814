@testable import BackgroundSync
import BackgroundSyncTesting
import Foundation
import LoopbackHTTPServer
import ServiceLifecycleTestKit
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("Replay against a loopback server")
struct ReplayTests {
    private func makeQueue(
        _ server: RecordingServer, transport: (any HTTPTransport)? = nil, options: QueueOptions = QueueOptions()
    ) throws -> (Queue, SQLiteQueueDatabase) {
        let database = try SQLiteQueueDatabase.temporary()
        let queue = try Queue(
            name: uniqueQueueName(), options: options, database: database, transport: transport ?? URLSessionTransport())
        return (queue, database)
    }

    @Test func deliversEveryEntryInOrderThenTheQueueIsEmpty() async throws {
        let server = try RecordingServer()
        let (queue, _) = try makeQueue(server)
        for index in 0..<5 {
            try await queue.pushRequest(postRequest(server.url, body: "post-\(index)", headers: ["Content-Type": "text/plain"]))
        }
        let summary = try await queue.replayRequests()
        #expect(summary.delivered == 5)
        #expect(server.bodies == (0..<5).map { "post-\($0)" })
        let first = try #require(server.received.current.first)
        #expect(first.method == "POST")
        #expect(first.path == "/api/posts")
        #expect(first.headers["content-type"] == "text/plain")
        #expect(try await queue.size() == 0)
        #expect(try await queue.replayRequests() == ReplaySummary())
    }

    @Test func aTransportErrorStopsReplayAndKeepsTheEntryAtTheHead() async throws {
        let server = try RecordingServer()
        let transport = FaultInjectingTransport()
        transport.failures.withLock { $0 = [nil, URLError(.notConnectedToInternet)] }
        let (queue, database) = try makeQueue(server, transport: transport)
        for body in ["a", "b", "c"] { try await queue.pushRequest(postRequest(server.url, body: body)) }

        let error = try await #require(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        #expect(error.code == .queueReplayFailed)
        #expect(error.underlying is URLError)
        #expect(error.queueName == queue.name)
        #expect(server.bodies == ["a"])
        let left = try await database.entries(queueName: queue.name, state: .pending)
        #expect(left.map { String(decoding: $0.requestData.body!, as: UTF8.self) } == ["b", "c"])
        #expect(left.map(\.attempts) == [1, 0])
        #expect(left[0].lastFailure?.kind == .noResponse)

        #expect(try await queue.replayRequests().delivered == 2)
        #expect(server.bodies == ["a", "b", "c"])
    }

    @Test func aStoppedServerIsARetryableFailure() async throws {
        let server = try RecordingServer()
        let (queue, _) = try makeQueue(server)
        try await queue.pushRequest(postRequest(server.url, body: "x"))
        let port = server.server.port
        server.server.stop()
        let error = try await #require(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        #expect(error.code == .queueReplayFailed)
        #expect(try await queue.size() == 1)
        try server.server.start(port: port)
        #expect(try await queue.replayRequests().delivered == 1)
        #expect(server.bodies == ["x"])
    }

    @Test(arguments: [500, 502, 503, 504, 507, 408, 425, 429])
    func retryableStatusesKeepTheEntry(status: Int) async throws {
        let server = try RecordingServer()
        server.respond { _, index in index == 0 ? .respond(.text("busy", status: status)) : .respond(.text("ok")) }
        let (queue, database) = try makeQueue(server)
        try await queue.pushRequest(postRequest(server.url, body: "first"))
        try await queue.pushRequest(postRequest(server.url, body: "second"))

        let error = try await #require(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        #expect(error.code == .queueReplayFailed)
        #expect(error.status == status)
        #expect(server.bodies == ["first"])
        let head = try #require(try await database.entries(queueName: queue.name, state: .pending).first)
        #expect(head.lastFailure?.status == status)
        #expect(head.attempts == 1)
        #expect(head.lastFailure?.responseExcerpt == Data("busy".utf8))

        #expect(try await queue.replayRequests().delivered == 2)
        #expect(server.bodies == ["first", "first", "second"])
    }

    @Test(arguments: [400, 404, 409, 410, 422, 501, 505])
    func refusedRequestsAreDeadLetteredAndReplayGoesOn(status: Int) async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            String(decoding: request.body, as: UTF8.self) == "bad"
                ? .respond(.text("no such thing", status: status)) : .respond(.text("ok", status: 201))
        }
        let (queue, _) = try makeQueue(server)
        for body in ["a", "bad", "c"] { try await queue.pushRequest(postRequest(server.url, body: body)) }

        let summary = try await queue.replayRequests()
        #expect(summary.delivered == 2)
        #expect(summary.deadLettered == 1)
        #expect(server.bodies == ["a", "bad", "c"])
        #expect(try await queue.size() == 0)
        let dead = try await queue.deadLetters()
        #expect(dead.count == 1)
        #expect(dead[0].requestData.body == Data("bad".utf8))
        #expect(dead[0].lastFailure?.status == status)
        #expect(dead[0].state == .dead)
        #expect(dead[0].lastFailure?.responseExcerpt == Data("no such thing".utf8))
    }

    @Test func theIdempotencyKeyIsTheSameOnEveryReplay() async throws {
        let server = try RecordingServer()
        server.respond { _, index in index < 2 ? .respond(.text("down", status: 503)) : .respond(.text("ok")) }
        let (queue, _) = try makeQueue(server)
        try await queue.pushRequest(postRequest(server.url, body: "once"))
        for _ in 0..<2 {
            await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        }
        try await queue.replayRequests()
        let keys = server.received.current.map { $0.headers["idempotency-key"] }
        #expect(keys.count == 3)
        #expect(keys[0] != nil)
        #expect(Set(keys).count == 1)
    }

    @Test func expiredEntriesAreRemovedNotSent() async throws {
        let server = try RecordingServer()
        let (queue, _) = try makeQueue(server, options: QueueOptions(maxRetentionTime: .seconds(60)))
        try await queue.pushRequest(QueueEntry(request: postRequest(server.url, body: "stale"), timestamp: Date(timeIntervalSinceNow: -120)))
        try await queue.pushRequest(postRequest(server.url, body: "fresh"))
        let summary = try await queue.replayRequests()
        #expect(summary.expired == 1)
        #expect(summary.delivered == 1)
        #expect(server.bodies == ["fresh"])
    }

    @Test func concurrentReplayCallsSendEachEntryOnce() async throws {
        let server = try RecordingServer()
        let (queue, _) = try makeQueue(server)
        for index in 0..<20 { try await queue.pushRequest(postRequest(server.url, body: "\(index)")) }
        try await withThrowingTaskGroup(of: ReplaySummary.self) { group in
            for _ in 0..<4 { group.addTask { try await queue.replayRequests() } }
            try await group.waitForAll()
        }
        #expect(server.bodies == (0..<20).map { "\($0)" })
    }

    private static func body(_ entry: QueueStoreEntry) -> String {
        String(decoding: entry.requestData.body ?? Data(), as: UTF8.self)
    }

    /// The ordered replay leases the next entry while it sends the current one; when replay stops
    /// at a retryable failure, that lease is given back (another replayer may take the entry).
    @Test func anEntryLeasedAheadIsGivenBackWhenReplayStopsAtAFailure() async throws {
        let server = try RecordingServer()
        server.respond { _, index in index == 1 ? .respond(.text("", status: 503)) : .respond(.text("ok")) }
        // An hour of backoff: "b" stays out of reach however slowly the test runs (under TSan).
        let (queue, database) = try makeQueue(
            server, options: QueueOptions(retryPolicy: RetryPolicy(initialDelay: .seconds(3600), jitter: false)))
        for body in ["a", "b", "c"] { try await queue.pushRequest(postRequest(server.url, body: body)) }
        await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        #expect(server.bodies == ["a", "b"])
        #expect(try await queue.size() == 2, "a is deleted")
        // "b" waits for its backoff; "c" is free for anyone.
        #expect(try await claimableEntries(database, queue.name).map(Self.body) == ["c"])
    }

    /// A graceful shutdown after a delivery: the delivered entry is deleted, the entries leased
    /// ahead are given back, and nothing else is sent.
    @Test func aGracefulShutdownDeletesTheLastDeliveryAndGivesBackTheEntriesLeasedAhead() async throws {
        let server = try RecordingServer()
        let trigger = Box<GracefulShutdownTestTrigger?>(nil)
        let options = QueueOptions(requestDidReplay: { entry, _ in
            if Self.body(entry) == "b" { trigger.current?.triggerGracefulShutdown() }
        })
        let (queue, database) = try makeQueue(server, options: options)
        for body in ["a", "b", "c", "d"] { try await queue.pushRequest(postRequest(server.url, body: body)) }
        let summary = try await testGracefulShutdown { shutdown in
            trigger.withLock { $0 = shutdown }
            return try await queue.replayRequests()
        }
        #expect(summary.delivered == 2)
        #expect(server.bodies == ["a", "b"])
        let left = try await database.entries(queueName: queue.name, state: .pending)
        #expect(left.map(Self.body) == ["c", "d"])
        let claim = try await orderedClaim(database, queue.name)
        guard case .claimed(let head) = claim.first else { Issue.record("the head is still leased: \(claim.first)"); return }
        #expect(Self.body(head) == "c")
    }

    /// An ordered replay leases a few entries ahead; a retryable failure gives every one of them
    /// back at once (another replayer can take the head right away) and deletes the delivered ones.
    @Test func aRetryableFailureGivesBackEveryEntryLeasedAhead() async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            String(decoding: request.body, as: UTF8.self) == "e3" ? .respond(.text("", status: 503)) : .respond(.text("ok", status: 201))
        }
        let (queue, database) = try makeQueue(server)
        for index in 0..<12 { try await queue.pushRequest(postRequest(server.url, body: "e\(index)")) }
        await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        #expect(server.bodies == ["e0", "e1", "e2", "e3"])
        #expect(try await queue.size() == 9)
        let claim = try await orderedClaim(database, queue.name)
        #expect(claim.entries.map(Self.body) == (3..<12).map { "e\($0)" }, "nothing is still leased")
    }

    /// Entries leased ahead are not sent on an old lease: past half the lease duration, the rest
    /// are leased again before the next is sent.
    @Test func leasesOlderThanHalfTheirDurationAreTakenAgainBeforeSending() async throws {
        let server = try RecordingServer()
        let clock = ManualWallClock()
        let start = clock.now.timeIntervalSince1970
        let database = try SQLiteQueueDatabase.temporary()
        let expiries = Box<[String: Double]>([:])
        let options = QueueOptions(
            requestWillReplay: { request, entry in
                let expiry = try await database.writer.read { db in
                    try Double.fetchOne(db, sql: "SELECT leaseExpiresAt FROM entry WHERE id = ?", arguments: [entry.id])
                }
                expiries.withLock { $0[Self.body(entry)] = expiry }
                if Self.body(entry) == "e1" { clock.advance(by: .seconds(40)) }
                return request
            },
            leaseDuration: .seconds(60), clock: clock)
        let queue = try Queue(name: uniqueQueueName(), options: options, database: database)
        for index in 0..<5 { try await queue.pushRequest(postRequest(server.url, body: "e\(index)")) }
        #expect(try await queue.replayRequests().delivered == 5)
        #expect(server.bodies == (0..<5).map { "e\($0)" })
        #expect(expiries.current["e0"] == start + 60 && expiries.current["e1"] == start + 60)
        for index in 2..<5 { #expect(expiries.current["e\(index)"] == start + 100, "e\(index) leased again") }
        #expect(try await queue.size() == 0)
    }

    /// An ordered replay leases 8 entries at a time, more (up to 64) while each batch goes out
    /// fast, and 8 again once the server is slow: what a process that dies mid-replay sends again
    /// (delivered entries waiting for the next lease to delete them) stays small in time.
    @Test(arguments: [0, 60, 200])
    func theOrderedBatchGrowsOnlyWhileTheServerIsFast(slowFrom: Int) async throws {
        let server = try RecordingServer()
        let clock = ManualWallClock()
        let database = try SQLiteQueueDatabase.temporary()
        // Rows leased (handed out, leased ahead, or delivered and not deleted yet) at each send.
        let leasedAtSend = Box<[Int: Int]>([:])
        let options = QueueOptions(
            requestWillReplay: { request, entry in
                let leased = try await database.writer.read { db in
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM entry WHERE state = 'pending' AND leaseOwner IS NOT NULL") ?? 0
                }
                let index = Int(Self.body(entry).dropFirst())!
                leasedAtSend.withLock { $0[index] = leased }
                if index >= slowFrom { clock.advance(by: .seconds(1)) }
                return request
            },
            clock: clock)
        let queue = try Queue(name: uniqueQueueName(), options: options, database: database)
        let count = 160
        for index in 0..<count { try await queue.pushRequest(postRequest(server.url, body: "e\(index)")) }
        #expect(try await queue.replayRequests().delivered == count)
        #expect(server.bodies == (0..<count).map { "e\($0)" })
        let leased = leasedAtSend.current
        let mostWhileFast = (0..<min(slowFrom, count)).map { leased[$0] ?? 0 }.max() ?? 0
        // Once slow, the batch under way ends (at most 64 more), then batches are 8 again: the 8
        // leased, and the one before them, delivered and deleted with the next lease.
        let mostOnceSlow = (min(slowFrom + 72, count)..<count).map { leased[$0] ?? 0 }.max() ?? 0
        if slowFrom > 0 { #expect(mostWhileFast > 32 && mostWhileFast <= 65, "at most \(mostWhileFast) leased") }
        if slowFrom + 72 < count { #expect(mostOnceSlow <= 9) }
    }

    /// A delivered entry's hook runs before the next entry is prepared, so it can shape the next
    /// request (a comment that needs the server id of the post replayed before it).
    @Test func eachDeliveryHookRunsBeforeTheNextRequestIsPrepared() async throws {
        let server = try RecordingServer()
        let calls = Box<[String]>([])
        let options = QueueOptions(
            requestWillReplay: { request, entry in
                calls.withLock { $0.append("will \(Self.body(entry))") }
                return request
            },
            requestDidReplay: { entry, _ in
                for _ in 0..<100 { await Task.yield() }  // a hook that lets other work run: the next send waits
                calls.withLock { $0.append("did \(Self.body(entry))") }
            })
        let (queue, _) = try makeQueue(server, options: options)
        for body in ["a", "b", "c"] { try await queue.pushRequest(postRequest(server.url, body: body)) }
        #expect(try await queue.replayRequests().delivered == 3)
        #expect(calls.current == ["will a", "did a", "will b", "did b", "will c", "did c"])
    }
}
