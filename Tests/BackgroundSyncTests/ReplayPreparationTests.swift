@testable import BackgroundSync
import Foundation
import Testing

/// The requests a SQLite replay's leases build ahead of the sends: the same request the replay
/// would build, taken once, never one for an entry the replay must rebuild itself.
@Suite("Requests built by the leases of a SQLite replay")
struct ReplayPreparationTests {
    private func sqlite(_ path: String, _ sql: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["sqlite3", path, sql]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "sqlite3 \(sql)")
    }

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

    /// Through a queue and the loopback server: the damaged entry is set aside as it would be
    /// without the leases' requests, the sealed one is rebuilt (and dead-lettered: no key), the
    /// plain one is delivered byte for byte.
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
