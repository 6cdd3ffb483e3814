@testable import BackgroundSync
import ChildProcesses
import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The requests a SQLite replay's leases build ahead of the sends: the same request the replay
/// would build, taken once, never one for an entry the replay must rebuild itself.
@Suite("Requests built by the leases of a SQLite replay")
struct ReplayPreparationTests {
    /// Three entries on a file: a plain one, one with sealed secret fields, and one whose URL was
    /// damaged on disk; the claims of an ordered replay of them, and the file's path.
    private func claimsOverThreeEntries(preparing: Bool) async throws -> (SQLiteReplayClaims, String) {
        let database = try SQLiteQueueDatabase.temporary()
        let store = QueueStore(queueName: "q", database: database)
        let data = StorableRequest.RequestData(
            url: "http://127.0.0.1:9/api/posts", method: "POST", headers: ["content-type": "text/plain"],
            body: Data("a".utf8))
        try await store.pushEntry(UnidentifiedQueueStoreEntry(requestData: data))
        try await store.pushEntry(UnidentifiedQueueStoreEntry(requestData: data, sealedSecrets: Data([1, 2, 3])))
        try await store.pushEntry(UnidentifiedQueueStoreEntry(requestData: data))
        try sqlite(database.path, "UPDATE entry SET url = 'not a url' WHERE id = (SELECT max(id) FROM entry)")
        let claims = try #require(
            database.claims(
                queueName: "q", order: .ordered, owner: LeaseOwner.current(), leaseDuration: .seconds(60),
                clock: SystemWallClock()) as? SQLiteReplayClaims)
        if preparing { claims.prepareRequests() }
        return (claims, database.path)
    }

    private func takeAll(_ claims: SQLiteReplayClaims) async throws -> [QueueStoreEntry] {
        var entries: [QueueStoreEntry] = []
        while case .claimed(let entry) = try await claims.next() { entries.append(entry) }
        return entries
    }

    @Test func aLeaseBuildsTheRequestTheReplayWouldBuildAndHandsItOutOnce() async throws {
        let (claims, _) = try await claimsOverThreeEntries(preparing: true)
        let entries = try await takeAll(claims)
        try #require(entries.count == 3)
        let plain = try #require(claims.preparedRequest(for: entries[0]))
        #expect(plain == (try StorableRequest(requestData: entries[0].requestData)))
        #expect(claims.preparedRequest(for: entries[0]) == nil, "taken once")
        #expect(claims.preparedRequest(for: entries[1]) == nil, "sealed secrets: rebuilt by the replay with them")
        #expect(claims.preparedRequest(for: entries[2]) == nil, "cannot be built: the replay dead-letters it")
        try await claims.finish()
    }

    @Test func nothingIsBuiltUnlessAskedAndNothingOutlivesTheReplay() async throws {
        let (unasked, _) = try await claimsOverThreeEntries(preparing: false)
        let entries = try await takeAll(unasked)
        #expect(entries.count == 3)
        #expect(unasked.preparedRequest(for: entries[0]) == nil)
        try await unasked.finish()

        let (asked, _) = try await claimsOverThreeEntries(preparing: true)
        let first = try #require(try await takeAll(asked).first)
        try await asked.finish()
        #expect(asked.preparedRequest(for: first) == nil, "finish() drops what was not taken")
    }

    /// The first entry is taken and given back, then changed on disk: the lease that takes it again
    /// builds the changed request, not the first one.
    @Test func aLeaseOfAnEntryGivenBackBuildsItsRequestAgain() async throws {
        let (claims, path) = try await claimsOverThreeEntries(preparing: true)
        guard case .claimed(let first) = try await claims.next() else { throw CancellationError() }
        try await claims.release(first, failure: nil, nextAttemptAt: nil)
        try sqlite(path, "UPDATE entry SET body = CAST('changed' AS BLOB) WHERE id = \(first.id)")
        let entries = try await takeAll(claims)
        try #require(entries.first?.id == first.id)
        let again = try #require(claims.preparedRequest(for: entries[0]))
        #expect(again.toObject().body == Data("changed".utf8))
        #expect(again == (try StorableRequest(requestData: entries[0].requestData)))
        try await claims.finish()
    }

    /// A queue's replay takes every request its leases built, unless a hook changes the requests.
    @Test func aReplayTakesTheLeasesRequestsUnlessAHookRebuildsThem() async throws {
        let server = try RecordingServer()
        for hooked in [false, true] {
            let database = ForwardingDatabase(base: try SQLiteQueueDatabase.temporary())
            let hookCalls = Box(0)
            var options = QueueOptions()
            if hooked {
                options.requestWillReplay = { request, _ in
                    hookCalls.withLock { $0 += 1 }
                    return request
                }
            }
            let queue = try Queue(name: uniqueQueueName(), options: options, database: database)
            for body in ["a", "b", "c", "d", "e"] { try await queue.pushRequest(postRequest(server.url, body: body)) }
            #expect(try await queue.replayRequests().delivered == 5)
            let claims = try #require(database.claimsMade.withLock { $0 }.first as? SQLiteReplayClaims)
            #expect(claims.preparedRequestsTaken == (hooked ? 0 : 5))
            #expect(hookCalls.withLock { $0 } == (hooked ? 5 : 0))
        }
        #expect(server.bodies == ["a", "b", "c", "d", "e", "a", "b", "c", "d", "e"])
    }

    /// Through a queue and the loopback server: the damaged entry is set aside as it would be
    /// without the leases' requests, the others are delivered as stored.
    @Test(arguments: [1, 3])
    func aReplayDeliversWhatTheLeasesBuiltAndSetsAsideWhatTheyCouldNot(concurrency: Int) async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        let name = uniqueQueueName()
        let store = QueueStore(queueName: name, database: database)
        for body in ["a", "b", "c", "d"] {
            try await store.pushEntry(UnidentifiedQueueStoreEntry(requestData: .init(
                url: server.url.absoluteString, method: "POST", headers: ["content-type": "text/plain"],
                body: Data(body.utf8))))
        }
        try sqlite(database.path, "UPDATE entry SET url = 'http://' WHERE CAST(body AS TEXT) = 'b'")
        let queue = try Queue(
            name: name, options: QueueOptions(maxConcurrentReplays: concurrency), database: database)
        let summary = try await queue.replayRequests()
        #expect(summary.delivered == 3 && summary.deadLettered == 1)
        #expect(server.bodies.sorted() == ["a", "c", "d"])
        if concurrency == 1 { #expect(server.bodies == ["a", "c", "d"]) }
        #expect(server.received.current.allSatisfy { $0.headers["content-type"] == "text/plain" })
        let dead = try await queue.deadLetters()
        #expect(dead.count == 1)
        #expect(dead.first?.lastFailure?.kind == .invalidRequest)
        #expect(dead.first?.lastFailure?.message.contains("cannot rebuild the request") == true)
    }
}
