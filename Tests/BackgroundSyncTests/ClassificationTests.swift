import BackgroundSync
import BackgroundSyncTesting
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Every classification branch, driven by a loopback server that injects the fault.
@Suite("Classification of replay outcomes against a fault-injecting server")
struct ClassificationTests {
    enum Expected: Sendable { case delivered, retry, paused, dead }

    struct Fault: Sendable, CustomTestStringConvertible {
        var name: String
        var action: LoopbackHTTPServer.Action
        var expected: Expected
        var testDescription: String { name }
    }

    static let faults: [Fault] = [
        Fault(name: "connection reset", action: .reset, expected: .retry),
        Fault(name: "closed without answer", action: .close, expected: .retry),
        Fault(name: "hang past the timeout", action: .hang(.seconds(10)), expected: .retry),
        Fault(name: "500", action: .respond(.text("boom", status: 500)), expected: .retry),
        Fault(name: "503 Retry-After", action: .respond(.text("later", status: 503, headers: ["Retry-After": "120"])), expected: .retry),
        Fault(name: "429", action: .respond(.text("slow down", status: 429)), expected: .retry),
        Fault(name: "401", action: .respond(.text("who are you", status: 401)), expected: .paused),
        Fault(name: "403", action: .respond(.text("no", status: 403)), expected: .paused),
        Fault(name: "404", action: .respond(.text("gone", status: 404)), expected: .dead),
        Fault(name: "slow body", action: .trickle(.text(String(repeating: "x", count: 2000), status: 201), chunks: 5, interval: .milliseconds(20)), expected: .delivered),
        Fault(name: "redirect answered", action: .respond(.text("", status: 304)), expected: .delivered),
    ]

    @Test(arguments: faults)
    func eachFaultLeadsToItsOutcome(fault: Fault) async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            String(decoding: request.body, as: UTF8.self) == "fault" ? fault.action : .respond(.text("ok"))
        }
        let clock = ManualWallClock()
        let database = try SQLiteQueueDatabase.temporary()
        let queue = try Queue(
            name: uniqueQueueName(),
            options: QueueOptions(retryPolicy: RetryPolicy(initialDelay: .seconds(2), jitter: false), clock: clock),
            database: database)
        var request = postRequest(server.url, body: "fault")
        request.timeoutInterval = 1
        try await queue.pushRequest(request)
        try await queue.pushRequest(postRequest(server.url, body: "next"))

        var thrown: BackgroundSyncError?
        do { try await queue.replayRequests() } catch let error as BackgroundSyncError { thrown = error }
        let pending = try await database.entries(queueName: queue.name, state: .pending)
        let dead = try await database.entries(queueName: queue.name, state: .dead)
        switch fault.expected {
        case .delivered:
            #expect(thrown == nil)
            #expect(pending.isEmpty && dead.isEmpty)
        case .dead:
            #expect(thrown == nil)
            #expect(pending.isEmpty)
            #expect(dead.count == 1 && dead[0].lastFailure?.status == 404 && dead[0].lastFailure?.responseExcerpt == Data("gone".utf8))
        case .retry:
            #expect(thrown?.code == .queueReplayFailed)
            #expect(pending.count == 2, "the failed entry and the one behind it stay")
            let head = try #require(pending.first)
            #expect(head.attempts == 1)
            let expectedDelay: TimeInterval = fault.name == "503 Retry-After" ? 120 : 2
            let scheduled = try #require(head.nextAttemptAt).timeIntervalSince(clock.now)
            #expect(abs(scheduled - expectedDelay) < 0.01)
            #expect(!server.bodies.contains("next"), "an ordered queue stops at the failed entry")
            if fault.name == "hang past the timeout" {
                // The request's own timeout (1 s) ended it, not the server giving up (10 s).
                #expect((thrown?.underlying as? URLError)?.code == .timedOut)
            }
        case .paused:
            #expect(thrown?.code == .queuePaused)
            #expect(await queue.isPaused)
            #expect(pending.count == 2)
            let again = try await #require(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
            #expect(again.code == .queuePaused)
        }
    }

    @Test func anyResponseIsSuccessIsWorkboxsBehaviour() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("broken", status: 500)) }
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(classifier: .anyResponseIsSuccess),
            database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "x"))
        #expect(try await queue.replayRequests().delivered == 1)
        #expect(try await queue.size() == 0)
    }

    @Test func aCustomClassifierDecides() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("duplicate", status: 409)) }
        let queue = try Queue(
            name: uniqueQueueName(),
            options: QueueOptions(classifier: ReplayClassifier { $0.status == 409 ? .delivered : .forStatus($0.status) }),
            database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "x"))
        #expect(try await queue.replayRequests().delivered == 1)
    }

    @Test func anEntryOutOfAttemptsBecomesADeadLetterAndReplayGoesOn() async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            String(decoding: request.body, as: UTF8.self) == "poison" ? .respond(.text("down", status: 503)) : .respond(.text("ok"))
        }
        let dead = Box<[QueueStoreEntry]>([])
        let queue = try Queue(
            name: uniqueQueueName(),
            options: QueueOptions(
                retryPolicy: RetryPolicy(maxAttempts: 3), onDeadLetter: { entry in dead.withLock { $0.append(entry) } }),
            database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "poison"))
        try await queue.pushRequest(postRequest(server.url, body: "healthy"))
        for _ in 0..<2 {
            await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        }
        let summary = try await queue.replayRequests()
        #expect(summary.deadLettered == 1 && summary.delivered == 1)
        #expect(server.bodies == ["poison", "poison", "poison", "healthy"])
        let letters = try await queue.deadLetters()
        #expect(letters.count == 1)
        #expect(letters[0].attempts == 3)
        #expect(letters[0].lastFailure?.message.contains("gave up after 3 attempts") == true)
        #expect(dead.current.map(\.id) == letters.map(\.id))
    }
}
