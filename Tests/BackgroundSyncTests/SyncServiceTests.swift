@testable import BackgroundSync
import BackgroundSyncTesting
import Foundation
import LoopbackHTTPServer
import Logging
import ServiceLifecycle
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Waits for the first event that matches.
func firstEvent(
    _ events: AsyncStream<QueueEvent>, where matches: (QueueEvent) -> Bool
) async -> QueueEvent? {
    for await event in events where matches(event) { return event }
    return nil
}

func isReplayed(_ event: QueueEvent) -> Bool {
    if case .replayed = event.kind { return true }
    return false
}

func isRetry(_ event: QueueEvent) -> Bool {
    if case .retryScheduled = event.kind { return true }
    return false
}

/// Runs a service in a ServiceGroup for the duration of `body`, then shuts it down gracefully.
func withRunningService(
    _ service: SyncService, _ body: () async throws -> Void
) async throws {
    let group = ServiceGroup(services: [service], logger: Logger(label: "test"))
    let running = Task { try await group.run() }
    do {
        try await body()
    } catch {
        await group.triggerGracefulShutdown()
        _ = try? await running.value
        throw error
    }
    await group.triggerGracefulShutdown()
    try await running.value
}

@Suite("SyncService", .timeLimit(.minutes(1)))
struct SyncServiceTests {
    @Test func atStartItResumesWhatAnEarlierRunLeftRegistered() async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        let name = uniqueQueueName()
        do {
            let earlier = try Queue(name: name, database: database)
            try await earlier.pushRequest(postRequest(server.url, body: "left over"))
        }
        let queue = try Queue(name: name, database: database)
        let events = queue.events()
        try await withRunningService(SyncService(queues: [queue], configuration: .init(connectivity: nil))) {
            #expect(await firstEvent(events, where: isReplayed) != nil)
        }
        #expect(server.bodies == ["left over"])
        #expect(try await queue.syncManager.getTags() == [])
    }

    @Test func aPushWhileOnlineIsSyncedRightAway() async throws {
        let server = try RecordingServer()
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        let events = queue.events()
        try await withRunningService(SyncService(queues: [queue], configuration: .init(connectivity: ManualConnectivityMonitor(.online)))) {
            try await queue.pushRequest(postRequest(server.url, body: "now"))
            #expect(await firstEvent(events, where: isReplayed)?.size == 0)
        }
        #expect(server.bodies == ["now"])
    }

    @Test func regainedConnectivityReplaysWhatFailedOffline() async throws {
        let server = try RecordingServer()
        let monitor = ManualConnectivityMonitor(.offline)
        let clock = ManualWallClock()
        let transport = FaultInjectingTransport()
        // The first attempt happens "offline": the transport fails as it would.
        transport.failures.withLock { $0 = [URLError(.notConnectedToInternet)] }
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(retryPolicy: RetryPolicy(initialDelay: .seconds(3600)), clock: clock),
            database: try SQLiteQueueDatabase.temporary(), transport: transport)
        try await queue.pushRequest(postRequest(server.url, body: "offline"))
        await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        #expect(try await queue.database.headEntry(queueName: queue.name)?.lastFailure?.kind == .noResponse)
        let events = queue.events()
        try await withRunningService(SyncService(queues: [queue], configuration: .init(connectivity: monitor, clock: clock))) {
            #expect(server.bodies.isEmpty, "offline: nothing is tried")
            monitor.set(.online)
            // The entry is in a one-hour backoff, but it failed for lack of a network: it goes now.
            #expect(await firstEvent(events, where: isReplayed) != nil)
        }
        #expect(server.bodies == ["offline"])
    }

    /// A `requestWillReplay` hook that threw is recorded as such, not as a missing response: when
    /// connectivity returns, the entry keeps its backoff instead of going at once.
    @Test func aHookThatThrewIsNotANetworkFailure() async throws {
        let server = try RecordingServer()
        let monitor = ManualConnectivityMonitor(.offline)
        let clock = ManualWallClock()
        let hookFails = Box(true)
        let options = QueueOptions(
            retryPolicy: RetryPolicy(initialDelay: .seconds(3600), jitter: false),
            requestWillReplay: { request, _ in
                if hookFails.current { throw BackgroundSyncError(.invalidRequest, "no token yet") }
                return request
            },
            clock: clock)
        let queue = try Queue(
            name: uniqueQueueName(), options: options, database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "needs a token"))
        await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        let head = try await queue.database.headEntry(queueName: queue.name)
        #expect(head?.lastFailure?.kind == .hookFailed)
        #expect(head?.lastFailure?.message.contains("no token yet") == true)
        hookFails.withLock { $0 = false }
        let events = queue.events()
        try await withRunningService(SyncService(queues: [queue], configuration: .init(connectivity: monitor, clock: clock))) {
            monitor.set(.online)
            // Back online, the service sets its timer for the backoff instead of syncing now.
            await clock.waitForSleepers(1)
            #expect(server.bodies.isEmpty, "the entry keeps its backoff")
            #expect(clock.nextDeadline == head?.nextAttemptAt)
            clock.advance(to: try #require(clock.nextDeadline))
            #expect(await firstEvent(events, where: isReplayed) != nil)
        }
        #expect(server.bodies == ["needs a token"])
    }

    @Test func theRetryTimerFiresWhenTheBackoffEnds() async throws {
        let server = try RecordingServer()
        server.respond { _, index in
            index == 0 ? .respond(.text("", status: 503, headers: ["Retry-After": "30"])) : .respond(.text("ok"))
        }
        let clock = ManualWallClock()
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(retryPolicy: RetryPolicy(jitter: false), clock: clock),
            database: try SQLiteQueueDatabase.temporary())
        let events = queue.events()
        try await withRunningService(SyncService(queues: [queue], configuration: .init(connectivity: nil, clock: clock))) {
            try await queue.pushRequest(postRequest(server.url, body: "x"))
            let retry = try #require(await firstEvent(events, where: isRetry))
            guard case .retryScheduled(let delay, _, let failure) = retry.kind else { return }
            #expect(delay == .seconds(30))
            #expect(failure.status == 503)
            await clock.waitForSleepers(1)
            let deadline = try #require(clock.nextDeadline)
            #expect(abs(deadline.timeIntervalSince(clock.now) - 30) < 0.01)
            #expect(server.bodies.count == 1, "nothing is sent before the deadline")
            clock.advance(to: deadline)
            #expect(await firstEvent(events, where: isReplayed) != nil)
        }
        #expect(server.bodies == ["x", "x"])
    }

    /// Entries another process holds keep the registration; the service looks at them again (at
    /// once when the head moved during the sync, then every second) without a push or a poll.
    @Test func entriesHeldByAnotherProcessAreSentOnceItLetsThemGo() async throws {
        let server = try RecordingServer()
        let clock = ManualWallClock()
        let database = try SQLiteQueueDatabase.temporary()
        let name = uniqueQueueName()
        let queue = try Queue(name: name, options: QueueOptions(maxConcurrentReplays: 2, clock: clock), database: database)
        try await queue.pushRequest(postRequest(server.url, body: "first"))
        try await queue.pushRequest(postRequest(server.url, body: "second"))
        // Another process leases both and gives "first" back: it holds "second".
        let other = try SQLiteQueueDatabase(path: database.path)
        let held = other.claims(
            queueName: name, order: .concurrent(maxInFlight: 2), owner: LeaseOwner(host: "other-host", processID: 1, token: "t"),
            leaseDuration: .seconds(300), clock: clock)
        guard case .claimed(let first) = try await held.next(), case .claimed(let second) = try await held.next() else {
            Issue.record("the other process leases both entries")
            return
        }
        try await held.release(first, failure: nil, nextAttemptAt: nil)
        let events = queue.events()
        try await withRunningService(SyncService(queues: [queue], configuration: .init(connectivity: nil, clock: clock))) {
            #expect(await firstEvent(events, where: isReplayed) != nil)
            // The registration stays for "second", and a timer waits to look again.
            await clock.waitForSleepers(1)
            #expect(try await queue.syncManager.getTags() == [queue.syncTag])
            try await held.release(second, failure: nil, nextAttemptAt: nil)
            try await held.finish()
            clock.advance(to: try #require(clock.nextDeadline))
            #expect(await firstEvent(events, where: isReplayed) != nil)
        }
        #expect(server.bodies == ["first", "second"])
    }

    @Test func aPoisonEntryIsDeadLetteredAfterMaxAttemptsAndTheQueueMovesOn() async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            String(decoding: request.body, as: UTF8.self) == "poison" ? .respond(.text("", status: 500)) : .respond(.text("ok"))
        }
        let clock = ManualWallClock()
        let queue = try Queue(
            name: uniqueQueueName(),
            options: QueueOptions(retryPolicy: RetryPolicy(initialDelay: .seconds(10), jitter: false, maxAttempts: 3), clock: clock),
            database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "poison"))
        try await queue.pushRequest(postRequest(server.url, body: "good"))
        let events = queue.events()
        try await withRunningService(SyncService(queues: [queue], configuration: .init(connectivity: nil, clock: clock))) {
            for _ in 0..<2 {
                _ = await firstEvent(events, where: isRetry)
                await clock.waitForSleepers(1)
                clock.advance(to: try #require(clock.nextDeadline))
            }
            #expect(await firstEvent(events, where: isReplayed) != nil)
        }
        #expect(server.bodies == ["poison", "poison", "poison", "good"])
        #expect(try await queue.deadLetters().count == 1)
        #expect(try await queue.syncManager.getTags() == [])
    }

    @Test func gracefulShutdownLetsTheSendInFlightFinishAndKeepsTheRest() async throws {
        let server = try RecordingServer()
        let (arrived, arrival) = AsyncStream.makeStream(of: Int.self)
        let release = DispatchSemaphore(value: 0)
        server.respond { _, index in
            arrival.yield(index)
            _ = release.wait(timeout: .now() + 10)
            return .respond(.text("ok"))
        }
        let database = try SQLiteQueueDatabase.temporary()
        let queue = try Queue(name: uniqueQueueName(), database: database)
        for index in 0..<5 { try await queue.pushRequest(postRequest(server.url, body: "\(index)")) }

        let service = SyncService(queues: [queue], configuration: .init(connectivity: nil))
        let group = ServiceGroup(services: [service], logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        var iterator = arrived.makeAsyncIterator()
        #expect(await iterator.next() == 0)
        await group.triggerGracefulShutdown()
        // The service learns of the shutdown in its own task: let it get there first.
        while !service.isShuttingDown { await Task.yield() }
        release.signal()
        try await running.value

        #expect(server.bodies == ["0"], "the send in flight finished; no new one started")
        #expect(try await queue.size() == 4)
        #expect(try await queue.syncManager.getTags() == [queue.syncTag], "what is left stays registered")
        for _ in 0..<4 { release.signal() }
        #expect(try await queue.replayRequests().delivered == 4, "no lease was left behind")
    }
}
