@testable import BackgroundSync
import BackgroundSyncTesting
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The decisions an iOS background task hands to `BGTaskScheduler` (``BackgroundTaskSync``): when
/// the next sync is due, and one round of the due syncs.
@Suite("Due syncs for short wake-ups (background tasks)")
struct DueSyncTests {
    @Test func aRoundRunsWhatIsDueAndTheNextDueDateFollowsTheBackoff() async throws {
        let server = try RecordingServer()
        server.respond { _, index in .respond(.text("", status: index == 0 ? 503 : 201)) }
        let clock = ManualWallClock()
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(retryPolicy: RetryPolicy(jitter: false), clock: clock), database: try SQLiteQueueDatabase.temporary())
        let service = SyncService(queues: [queue], configuration: .init(connectivity: nil, clock: clock))
        #expect(try await service.nextDueDate() == nil, "nothing queued, nothing to schedule")

        try await queue.pushRequest(postRequest(server.url, body: "a"))
        try await queue.pushRequest(postRequest(server.url, body: "b"))
        #expect(try await service.nextDueDate() == clock.now, "a fresh entry is due at once")

        try await service.runDueSyncs()                       // 503: the head backs off
        #expect(server.bodies == ["a"])
        let head = try #require(try await queue.headEntry())
        let backoff = try #require(head.nextAttemptAt)
        #expect(backoff > clock.now)
        #expect(try await service.nextDueDate() == backoff)
        try await service.runDueSyncs()                       // not due yet: nothing sent
        #expect(server.bodies == ["a"])
        clock.advance(to: backoff)
        try await service.runDueSyncs()
        #expect(server.bodies == ["a", "a", "b"])
        #expect(try await queue.size() == 0)
        #expect(try await service.nextDueDate() == nil, "the successful sync consumed the registration")
    }

    @Test func aPausedQueueIsNotDue() async throws {
        let transport = ScriptedTransport()
        transport.script(.answer(status: 401))
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary(), transport: transport)
        let service = SyncService(queues: [queue], configuration: .init(connectivity: nil))
        try await queue.pushRequest(postRequest(URL(string: "http://127.0.0.1:9/")!, body: "x"))
        try await service.runDueSyncs()
        #expect(await queue.isPaused)
        #expect(try await service.nextDueDate() == nil)
    }
}
