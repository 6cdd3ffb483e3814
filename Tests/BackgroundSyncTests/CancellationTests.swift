import BackgroundSync
import BackgroundSyncTesting
import Foundation
import LoopbackHTTPServer
import Logging
import ServiceLifecycle
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Replay runs in the caller's task: cancelling that task (or the service group running a
/// `SyncService`) stops it after the sends in flight, gives back every entry it leased, and loses
/// nothing.
@Suite("Cancellation reaches a running replay")
struct CancellationTests {
    /// Every entry is still pending, untouched (no attempt counted), and free: another replayer
    /// takes the whole queue in order.
    private func expectAllBackUntouched(_ database: SQLiteQueueDatabase, _ queue: String, count: Int) async throws {
        let pending = try await database.entries(queueName: queue, state: .pending)
        #expect(pending.count == count, "nothing lost")
        #expect(pending.allSatisfy { $0.attempts == 0 && $0.lastFailure == nil }, "no attempt counted")
        let claim = try await orderedClaim(database, queue)
        #expect(claim.entries.map(\.id) == pending.map(\.id), "no lease left behind")
    }

    /// A queue of `count` entries on a new database, replayed through `transport`.
    private func makeQueue(
        _ transport: ScriptedTransport, count: Int, options: QueueOptions = QueueOptions()
    ) async throws -> (Queue, SQLiteQueueDatabase) {
        let database = try SQLiteQueueDatabase.temporary()
        let queue = try Queue(name: uniqueQueueName(), options: options, database: database, transport: transport)
        for index in 0..<count {
            try await queue.pushRequest(postRequest(URL(string: "https://a.example/\(index)")!, body: "\(index)"))
        }
        return (queue, database)
    }

    /// On a real loopback server that holds the request: `URLSession`'s send is cancelled with the
    /// task, and the entry goes back untouched.
    @Test func cancellingTheCallerOfReplayRequestsStopsAnOrderedReplay() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .hang(.seconds(30)) }
        let database = try SQLiteQueueDatabase.temporary()
        let queue = try Queue(name: uniqueQueueName(), database: database)
        for index in 0..<12 { try await queue.pushRequest(postRequest(server.url, body: "e\(index)")) }
        let replay = Task { try await queue.replayRequests() }
        while server.received.current.isEmpty { await Task.yield() }
        replay.cancel()
        await #expect(throws: CancellationError.self) { try await replay.value }
        #expect(server.bodies == ["e0"], "nothing sent after the cancellation")
        try await expectAllBackUntouched(database, queue.name, count: 12)
    }

    @Test func cancellingTheCallerOfReplayRequestsStopsAConcurrentReplay() async throws {
        let transport = ScriptedTransport(whenUnscripted: .hang)
        let (queue, database) = try await makeQueue(transport, count: 20, options: QueueOptions(maxConcurrentReplays: 3))
        let replay = Task { try await queue.replayRequests() }
        await transport.waitForHanging(3)
        replay.cancel()
        await #expect(throws: CancellationError.self) { try await replay.value }
        #expect(transport.callCount == 3, "three in flight, none started after the cancellation")
        try await expectAllBackUntouched(database, queue.name, count: 20)
    }

    /// What was delivered before the cancellation stays delivered (its deletion, batched with the
    /// next lease, is made when the replay gives the rest back).
    @Test func aDeliveryBeforeTheCancellationIsKept() async throws {
        let transport = ScriptedTransport()
        transport.script(.answer(status: 201), .hang)
        let (queue, database) = try await makeQueue(transport, count: 5)
        let replay = Task { try await queue.replayRequests() }
        await transport.waitForHanging(1)
        replay.cancel()
        await #expect(throws: CancellationError.self) { try await replay.value }
        try await expectAllBackUntouched(database, queue.name, count: 4)
    }

    /// Cancelling the task that runs a service group cancels the `SyncService` in it, and with it
    /// the replay it started.
    @Test func cancellingTheServiceGroupStopsTheReplayOfItsSyncService() async throws {
        let transport = ScriptedTransport(whenUnscripted: .hang)
        let (queue, database) = try await makeQueue(transport, count: 6)
        let group = ServiceGroup(
            services: [SyncService(queues: [queue], configuration: .init(connectivity: nil))],
            logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        await transport.waitForHanging(1)
        running.cancel()
        _ = try? await running.value
        #expect(transport.callCount == 1)
        try await expectAllBackUntouched(database, queue.name, count: 6)
    }

    /// A second caller waits for the replay that runs; cancelling that second caller ends its wait
    /// only, and the replay goes on for the first.
    @Test func aCancelledJoinerLeavesTheRunningReplayAlone() async throws {
        let transport = ScriptedTransport()
        transport.script(.hang)
        let (queue, _) = try await makeQueue(transport, count: 3)
        let first = Task { try await queue.replayRequests() }
        await transport.waitForHanging(1)
        let second = Task { try await queue.replayRequests() }
        second.cancel()
        await #expect(throws: CancellationError.self) { try await second.value }
        transport.releaseHanging(with: .answer(status: 200))
        #expect(try await first.value.delivered == 3)
        #expect(try await queue.size() == 0)
    }
}
