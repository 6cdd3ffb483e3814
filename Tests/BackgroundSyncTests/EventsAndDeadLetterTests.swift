import BackgroundSync
import BackgroundSyncTesting
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("Queue events and dead letters")
struct EventsAndDeadLetterTests {
    private func describe(_ event: QueueEvent) -> String {
        switch event.kind {
        case .enqueued: "enqueued size=\(event.size)"
        case .replayed(let response): "replayed \(response.status) size=\(event.size)"
        case .retryScheduled(let delay, let attempts, let failure):
            "retry \(delay) attempts=\(attempts) status=\(failure.status ?? 0)"
        case .deadLettered(let failure): "dead \(failure.status ?? 0) size=\(event.size)"
        case .expired: "expired size=\(event.size)"
        case .paused(let status): "paused \(status)"
        case .resumed: "resumed"
        }
    }

    @Test func theEventStreamTellsAUIWhatHappened() async throws {
        let server = try RecordingServer()
        server.respond { request, index in
            switch String(decoding: request.body, as: UTF8.self) {
            case "refused": .respond(.text("bad", status: 422))
            case "later" where index < 3: .respond(.text("", status: 503, headers: ["Retry-After": "30"]))
            default: .respond(.text("ok", status: 201))
            }
        }
        let clock = ManualWallClock()
        let queue = try Queue(
            name: uniqueQueueName(),
            options: QueueOptions(maxRetentionTime: .seconds(3600), retryPolicy: RetryPolicy(jitter: false), clock: clock),
            database: try SQLiteQueueDatabase.temporary())
        let events = queue.events()
        try await queue.pushRequest(postRequest(server.url, body: "fine"))
        try await queue.pushRequest(postRequest(server.url, body: "refused"))
        try await queue.pushRequest(postRequest(server.url, body: "later"))
        try await queue.pushRequest(QueueEntry(
            request: postRequest(server.url, body: "stale"), timestamp: clock.now.addingTimeInterval(-7200)))
        await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        try await queue.replayRequests()

        var seen: [String] = []
        for await event in events {
            seen.append(describe(event))
            if seen.count == 9 { break }
        }
        #expect(seen == [
            "enqueued size=1", "enqueued size=2", "enqueued size=3", "enqueued size=4",
            "replayed 201 size=3", "dead 422 size=2", "retry 30.0 seconds attempts=1 status=503",
            "replayed 201 size=1", "expired size=0",
        ])
    }

    @Test func deadLettersCanBeListedRequeuedAndDeleted() async throws {
        let server = try RecordingServer()
        let accept = Box(false)
        server.respond { _, _ in accept.current ? .respond(.text("ok")) : .respond(.text("nope", status: 400)) }
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        for body in ["a", "b", "c"] { try await queue.pushRequest(postRequest(server.url, body: body)) }
        #expect(try await queue.replayRequests().deadLettered == 3)
        let dead = try await queue.deadLetters()
        #expect(dead.map { String(decoding: $0.requestData.body!, as: UTF8.self) } == ["a", "b", "c"])
        #expect(dead.allSatisfy { $0.state == .dead && $0.lastFailure?.status == 400 && $0.attempts == 1 })
        #expect(try await queue.size() == 0)

        try await queue.deleteDeadLetter(id: dead[2].id)
        let missing = try await #require(throws: BackgroundSyncError.self) { try await queue.deleteDeadLetter(id: dead[2].id) }
        #expect(missing.code == .entryNotFound)

        accept.withLock { $0 = true }
        try await queue.requeueDeadLetter(id: dead[1].id)
        #expect(try await queue.size() == 1)
        #expect(try await queue.syncManager.getTags() == [queue.syncTag])
        #expect(try await queue.requeueAllDeadLetters() == 1)
        let requeued = try await queue.getAll()
        #expect(requeued.map { String(decoding: $0.request.httpBody!, as: UTF8.self) } == ["a", "b"], "old positions kept")
        #expect(try await queue.replayRequests().delivered == 2)
        #expect(try await queue.deadLetters().isEmpty)

        await #expect(throws: BackgroundSyncError.self) { try await queue.requeueDeadLetter(id: 999_999) }
    }

    @Test func deleteAllDeadLetters() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("nope", status: 410)) }
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        for body in ["a", "b"] { try await queue.pushRequest(postRequest(server.url, body: body)) }
        try await queue.replayRequests()
        #expect(try await queue.deleteAllDeadLetters() == 2)
        #expect(try await queue.deadLetters().isEmpty)
    }

    /// One entry that can never be delivered (its host is gone) blocks an ordered queue; setting it
    /// aside keeps it as a dead letter and lets the entries behind it go; a pending entry can also
    /// be deleted.
    @Test func aStuckHeadIsSetAsideOrDeletedAndTheQueueMovesOn() async throws {
        let server = try RecordingServer()
        let gone = LoopbackHTTPServer { _ in .respond(.text("")) }
        try gone.start()
        let goneURL = gone.baseURL.appendingPathComponent("api")
        gone.stop()  // connections to it are refused from now on
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        let stuck = try await queue.pushRequest(postRequest(goneURL, body: "stuck"))
        for body in ["a", "b"] { try await queue.pushRequest(postRequest(server.url, body: body)) }
        for _ in 0..<2 { await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() } }
        #expect(server.bodies.isEmpty, "the head blocks the queue")

        let events = queue.events()
        try await queue.setAside(id: stuck, reason: "the old host is gone")
        let event = await firstEvent(events) { if case .deadLettered = $0.kind { true } else { false } }
        guard case .deadLettered(let failure) = event?.kind else { Issue.record("no dead-letter event"); return }
        #expect(failure.kind == .setAside && failure.message == "the old host is gone")
        #expect(try await queue.replayRequests().delivered == 2)
        #expect(server.bodies == ["a", "b"])
        let dead = try await queue.deadLetters()
        #expect(dead.map(\.id) == [stuck])
        #expect(dead.first?.lastFailure?.kind == .setAside)
        #expect(dead.first?.attempts == 2, "its failed attempts are kept")

        let again = try await queue.pushRequest(postRequest(goneURL, body: "never"))
        try await queue.deletePendingEntry(id: again)
        #expect(try await queue.size() == 0)
        let notPending = try await #require(throws: BackgroundSyncError.self) { try await queue.setAside(id: stuck) }
        #expect(notPending.code == .entryNotFound)
        let deleted = try await #require(throws: BackgroundSyncError.self) { try await queue.deletePendingEntry(id: again) }
        #expect(deleted.code == .entryNotFound)
        #expect(try await queue.deadLetters().count == 1, "the dead letter is still there")
    }
}
