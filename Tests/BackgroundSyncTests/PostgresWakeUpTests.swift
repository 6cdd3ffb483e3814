import BackgroundSync
import ChildProcesses
@_spi(Testing) import BackgroundSyncPostgres
import Foundation
import Logging
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import PostgresTestServer
import ServiceLifecycle
import Testing

/// Pushes on one instance of a PostgreSQL store wake a service on another, without polling.
@Suite(
    "PostgreSQL wake-ups", .timeLimit(.minutes(2)),
    .enabled(if: PostgresTestServer.unavailableReason == nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresWakeUpTests {
    /// A fresh schema on the shared test server.
    private func configuration() async throws -> PostgresQueueDatabase.Configuration {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: postgres.url + "?sslmode=disable")
        configuration.schema = uniqueSchema("wake")
        return configuration
    }

    /// Runs `body` with a producer instance, while a `SyncService` on another instance (which does
    /// not poll) waits, idle, to replay `queueName` to the server: it has had its start-up round,
    /// so a push can reach it only through the store's notifications.
    private func withIdleService(
        queueName: String, configuration: PostgresQueueDatabase.Configuration? = nil,
        before: (_ producer: PostgresQueueDatabase, RecordingServer) async throws -> Void = { _, _ in },
        _ body: (_ producer: PostgresQueueDatabase, RecordingServer, Queue) async throws -> Void
    ) async throws {
        let configuration = if let configuration { configuration } else { try await self.configuration() }
        let stores = RunningStores()
        do {
            let worker = try await stores.open(configuration)
            let producer = try await stores.open(configuration)
            let server = try RecordingServer()
            try await before(producer, server)
            // The queue exists before the service starts; it then waits with no poll and no timer due.
            let queue = try Queue(name: queueName, database: worker)
            let service = SyncService(queues: [queue], configuration: .init(connectivity: nil, pollInterval: nil))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await service.run() }
                try await Task.sleep(for: .milliseconds(300))
                try await body(producer, server, queue)
                group.cancelAll()
            }
        } catch {
            await stores.stopAll()
            throw error
        }
        await stores.stopAll()
    }

    @Test func aPushOnAnotherInstanceWakesAnIdleService() async throws {
        try await withIdleService(queueName: "orders") { producer, server, queue in
            // The producer's push goes straight to its instance (no SyncManager of this process
            // hears of it): only the store's notification can wake the service.
            _ = try await producer.pushEntry(
                UnidentifiedQueueStoreEntry(requestData: try postRequest(to: server, "from another host")),
                queueName: "orders", at: .tail, registeringSyncTag: queue.syncTag)
            try await waitUntil { !server.bodies.isEmpty }
            #expect(server.bodies == ["from another host"])
        }
    }

    /// A dead letter requeued on another instance, and its queue's sync registered there (as
    /// `Queue.requeueAllDeadLetters()` and `bgsync requeue` do), wakes an idle service.
    @Test func aRequeueOnAnotherInstanceWakesAnIdleService() async throws {
        try await withIdleService(queueName: "orders") { producer, server in
            // A dead letter before the service starts: nothing replays it.
            let pushed = try await producer.pushEntry(
                UnidentifiedQueueStoreEntry(requestData: try postRequest(to: server, "set aside")),
                queueName: "orders", at: .tail, registeringSyncTag: nil)
            let failure = ReplayFailure(kind: .httpStatus, status: 400, message: "refused")
            #expect(try await producer.setAsideEntries(queueName: "orders", ids: [pushed.id], failure: failure) == 1)
        } _: { producer, server, queue in
            #expect(server.bodies.isEmpty)
            #expect(try await producer.requeueDeadEntries(queueName: "orders", ids: nil) == 1)
            try await producer.registerSyncTag(queue.syncTag, at: Date())
            try await waitUntil { !server.bodies.isEmpty }
            #expect(server.bodies == ["set aside"])
        }
    }

    /// Back-to-back pushes are announced in rounds at least ``PostgresQueueDatabase/announcementInterval``
    /// apart, not one notification per push, and every one of them by a round that went through;
    /// an idle service on another instance delivers every entry.
    @Test func aBurstOfPushesIsAnnouncedInFewRoundsAndCompletely() async throws {
        let count = 40
        try await withIdleService(queueName: "burst") { producer, server, queue in
            let start = ContinuousClock.now
            for index in 0..<count {
                _ = try await producer.pushEntry(
                    UnidentifiedQueueStoreEntry(requestData: try postRequest(to: server, "\(index)")),
                    queueName: "burst", at: .tail, registeringSyncTag: queue.syncTag)
            }
            let elapsed = ContinuousClock.now - start
            try await waitUntil { server.bodies.count == count && producer.announcerProgress.announced == count }
            let progress = producer.announcerProgress
            #expect(server.bodies == (0..<count).map { "\($0)" })
            #expect(progress.asked == count && progress.announced == count, "every push announced: \(progress)")
            // The first round goes out at once, each later one an interval after the one before;
            // the last may come an interval after the last push.
            let most = Int(elapsed / producer.announcementInterval) + 2
            #expect((1...most).contains(progress.rounds), "\(progress.rounds) rounds for \(count) pushes in \(elapsed)")
            if let gap = progress.shortestGap {
                #expect(gap >= producer.announcementInterval, "rounds \(gap) apart")
            }
        }
    }

    /// Runs `body` while an instance of the store listens for notifications, warmed up (it heard
    /// its own push to `warm-up`), with a server to address requests to; returns the queue names
    /// the listener heard, in order, once `heard` holds for them (10 seconds at most).
    private func withListener(
        _ configuration: PostgresQueueDatabase.Configuration, until heard: @escaping ([String]) -> Bool,
        _ body: (_ server: RecordingServer) async throws -> Void
    ) async throws -> [String] {
        let stores = RunningStores()
        let names = Locked<[String]>([])
        do {
            let listener = try await stores.open(configuration)
            let notifications = try #require(listener.pushNotifications())
            let server = try RecordingServer()
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { for await name in notifications { names.withLock { $0.append(name) } } }
                try await warmUp(listener, server, heard: names)
                try await body(server)
                try await waitUntil { heard(names.withLock { $0 }) }
                tasks.cancelAll()
            }
        } catch {
            await stores.stopAll()
            throw error
        }
        await stores.stopAll()
        return names.withLock { $0 }
    }

    /// A store run in a service group that shuts down gracefully announces, before it stops, the
    /// pushes whose round was still to come: another instance hears of them.
    @Test func aGracefulShutdownAnnouncesWhatWaits() async throws {
        let configuration = try await configuration()
        var (before, after) = ((asked: 0, announced: 0), (asked: 0, announced: 0))
        let names = try await withListener(configuration, until: Self.heardTheStop) { server in
            let producer = try PostgresQueueDatabase(configuration: configuration)
            // Only the first push's round goes out before the shutdown.
            producer.announcementInterval = .seconds(60)
            let group = ServiceGroup(services: [producer], logger: Logger(label: "test"))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                func push(_ index: Int) async throws {
                    _ = try await producer.pushEntry(
                        UnidentifiedQueueStoreEntry(requestData: try postRequest(to: server, "\(index)")),
                        queueName: "stopping", at: .tail, registeringSyncTag: nil)
                }
                try await push(0)
                try await waitUntil { producer.announcerProgress.announced == 1 }
                for index in 1..<10 { try await push(index) }
                before = (producer.announcerProgress.asked, producer.announcerProgress.announced)
                await group.triggerGracefulShutdown()
                try await tasks.next()
                after = (producer.announcerProgress.asked, producer.announcerProgress.announced)
            }
        }
        #expect(before == (10, 1), "one round before the shutdown: \(before)")
        #expect(after == (10, 10), "every push announced at the stop: \(after)")
        #expect(Self.heardTheStop(names), "what the other instance heard: \(names)")
    }

    /// An instance that started a push which asked for no announcement (here the server refuses
    /// the entry; a stop can also cut a push's answer off before it asks) still sends the stop's
    /// notification: a push that started may have stored its entry.
    @Test func aPushWithoutAnswerIsStillAnnouncedAtTheStop() async throws {
        let configuration = try await configuration()
        let names = try await withListener(configuration, until: Self.heardAfterWarmUp) { server in
            try await PostgresQueueDatabase.withDatabase(configuration) { producer in
                var refused = try postRequest(to: server, "refused")
                refused.url += "\u{0}"
                let push = await Result {
                    try await producer.pushEntry(
                        UnidentifiedQueueStoreEntry(requestData: refused), queueName: "refused", at: .tail,
                        registeringSyncTag: nil)
                }
                #expect(throws: BackgroundSyncError.self) { try push.get() }
                #expect(producer.announcerProgress.asked == 0)
            }
        }
        #expect(Self.heardAfterWarmUp(names), "what the other instance heard: \(names)")
    }

    /// The ways a push is written (see `PushBatcher`), for ``aPushWhoseConnectionIsLostIsAnnounced(_:)``.
    enum PushWay: CaseIterable, Sendable {
        /// The first push to a queue: its own statement, through the store's task.
        case unbatched
        /// A push to a known queue while none contends: written in its caller's task.
        case direct
        /// One more push arriving meanwhile: written alone by the batcher's drain.
        case alone
        /// Two more: written in one statement by the drain.
        case batch

        /// The pushes made at once, and the statements that carry them.
        var pushes: Int { self == .batch ? 3 : self == .alone ? 2 : 1 }
        var statements: Int { pushes == 1 ? 1 : 2 }
    }

    /// A push whose connection is lost while its statement runs may have stored its entry: it is
    /// announced all the same, and another instance hears of its queue. The pushes wait for their
    /// tag's registration lock, held by a `psql` session, and each statement's backend is
    /// terminated in turn.
    @Test(arguments: PushWay.allCases)
    func aPushWhoseConnectionIsLostIsAnnounced(_ way: PushWay) async throws {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        let configuration = try await configuration()
        let holder = "bgsync-holder-\(configuration.schema)"
        let tag = "lost-\(configuration.schema)"
        let lock = Locked<ChildProcess?>(nil)
        let sql = { (text: String) in try await offCooperativePool { try PostgresSessionTests.psql(postgres, text) } }
        // The sessions waiting for the tag's registration lock (a key of `bigint`, as pg_locks splits it).
        let waitingForTheLock = """
            FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
            AND ((classid::bigint << 32) | objid::bigint) = hashtextextended('bgsync registration ' || '\(tag)', 0)
            """
        let endHolder = {
            guard let process = lock.withLock({ $0 }) else { return }
            process.send(SIGKILL)
            _ = try? await sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '\(holder)'")
            _ = try? await offCooperativePool { process.waitUntilExit() }
        }
        let asked = Locked(0)
        let ended = Locked(0)
        let names: [String]
        do {
            // The listener hears `lost` for the push before (to a known queue), then for the lost ones.
            let least = way == .unbatched ? 1 : 2
            names = try await withListener(configuration, until: { $0.filter { $0 == "lost" }.count >= least }) { server in
                // The server ends the holder's session soon after `psql` is killed.
                var environment = ProcessInfo.processInfo.environment
                environment["PGOPTIONS"] = "-c client_connection_check_interval=100"
                let process = try ChildProcess("/usr/bin/env", [
                    "psql", "host=127.0.0.1 port=\(postgres.port) user=\(postgres.user) dbname=postgres application_name=\(holder)",
                    "-c", "SELECT pg_advisory_xact_lock(hashtextextended('bgsync registration ' || '\(tag)', 0)), pg_sleep(120)",
                ], environment: environment, standardOutput: .nullDevice, standardError: .nullDevice)
                lock.withLock { $0 = process }
                try await waitFor("the lock held") {
                    try await sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = '\(holder)' AND wait_event = 'PgSleep'") == "1"
                }
                try await PostgresQueueDatabase.withDatabase(configuration) { producer in
                    if way != .unbatched {
                        _ = try await producer.pushEntry(
                            UnidentifiedQueueStoreEntry(requestData: try postRequest(to: server, "before")), queueName: "lost",
                            at: .tail, registeringSyncTag: nil)
                    }
                    try await withThrowingTaskGroup(of: Void.self) { tasks in
                        do {
                            for index in 0..<way.pushes {
                                tasks.addTask {
                                    let push = await Result {
                                        try await producer.pushEntry(
                                            UnidentifiedQueueStoreEntry(requestData: try postRequest(to: server, "lost \(index)")),
                                            queueName: "lost", at: .tail, registeringSyncTag: tag)
                                    }
                                    #expect(throws: BackgroundSyncError.self) { try push.get() }
                                    ended.withLock { $0 += 1 }
                                }
                                // The first push holds the statement; the others wait for it in the batcher.
                                if index == 0 {
                                    try await waitFor("the first push waiting for the lock") {
                                        try await sql("SELECT count(*) \(waitingForTheLock)") == "1"
                                    }
                                } else {
                                    try await waitFor("\(index) pushes waiting in the batcher") { producer.waitingPushes == index }
                                }
                            }
                            // Ends the backend of each statement waiting for the lock, in turn, until every
                            // push failed. (The batcher's statement may also fail at once, on the pool's
                            // connection to the first one's ended session: an outcome as unknown.)
                            try await waitFor("every push ended") {
                                _ = try await sql("SELECT count(pg_terminate_backend(pid)) \(waitingForTheLock)")
                                return ended.withLock { $0 } == way.pushes
                            }
                        } catch {
                            // The pushes wait for the lock until its holder ends.
                            await endHolder()
                            throw error
                        }
                        try await tasks.waitForAll()
                    }
                    asked.withLock { $0 = producer.announcerProgress.asked }
                }
            }
        } catch {
            await endHolder()
            throw error
        }
        await endHolder()
        // One announcement per failed statement, besides the push before.
        let before = way == .unbatched ? 0 : 1
        #expect(asked.withLock { $0 } == before + way.statements, "the failed pushes asked for announcements")
        #expect(names.filter { $0 == "lost" }.count >= before + 1, "what the other instance heard: \(names)")
    }

    /// Waits until `condition` holds, 10 seconds at most; fails naming `what` otherwise.
    private func waitFor(_ what: String, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while try await !condition() {
            guard ContinuousClock.now < deadline else { throw WaitTimedOut(what: what) }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// `bgsync enqueue` pushes and stops at once: its push still wakes a service that does not poll.
    @Test func aPushByAShortLivedBgsyncWakesAnIdleService() async throws {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        let configuration = try await configuration()
        try await withIdleService(queueName: "orders", configuration: configuration) { _, server, _ in
            for body in ["first", "second"] {
                let run = try await bgsync([
                    "enqueue", server.url.absoluteString, "--queue", "orders", "-d", body,
                    "--db", postgres.url + "?sslmode=disable&schema=\(configuration.schema)",
                ])
                #expect(run.status == 0, "\(run.stderr)")
            }
            try await waitUntil { server.bodies.count == 2 }
            #expect(server.bodies == ["first", "second"])
        }
    }

    /// Whether a listener heard the first round's queue, then the stop's notification for every
    /// queue (an empty name; one also comes when its own session starts listening).
    private static func heardTheStop(_ names: [String]) -> Bool {
        guard let first = names.firstIndex(of: "stopping") else { return false }
        return names[(first + 1)...].contains("")
    }

    /// Pushes to the queue `warm-up` on `listener` until `listener` hears it (10 seconds at
    /// most): from then on it listens.
    private func warmUp(_ listener: PostgresQueueDatabase, _ server: RecordingServer, heard names: Locked<[String]>) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        repeat {
            _ = try await listener.pushEntry(
                UnidentifiedQueueStoreEntry(requestData: try postRequest(to: server, "warm-up")),
                queueName: "warm-up", at: .tail, registeringSyncTag: nil)
            let asked = ContinuousClock.now
            while !names.withLock({ $0.contains("warm-up") }), ContinuousClock.now - asked < .milliseconds(500) {
                try await Task.sleep(for: .milliseconds(10))
            }
        } while !names.withLock({ $0.contains("warm-up") }) && ContinuousClock.now < deadline
    }

    /// Whether a listener heard its warm-up push, then a notification for every queue.
    private static func heardAfterWarmUp(_ names: [String]) -> Bool {
        guard let first = names.firstIndex(of: "warm-up") else { return false }
        return names[(first + 1)...].contains("")
    }

    /// Waits until `condition` holds, 10 seconds at most.
    private func waitUntil(_ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !condition(), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
    }

    /// A POST of `body` to `server`, as a store holds it.
    private func postRequest(to server: RecordingServer, _ body: String) throws -> StorableRequest.RequestData {
        var request = URLRequest(url: server.url)
        request.httpMethod = "POST"
        request.httpBody = Data(body.utf8)
        return try StorableRequest.fromRequest(request).toObject()
    }
}

/// A condition a test waited for did not come.
private struct WaitTimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "\(what): not within 10 seconds" }
}
