import BackgroundSync
import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle

/// A ``QueueDatabase`` on PostgreSQL: one set of queues shared by every process and host that
/// opens the same database and schema. Any instance may queue a request, any live worker may
/// replay it, and nothing is sent by two workers at once while their sessions last: a worker
/// whose session is lost (its connection dropped, the server ended it) frees its leases, so an
/// entry it is sending then may be sent by another worker too, with the same `Idempotency-Key`.
///
/// The store runs on PostgresNIO's `PostgresClient` and needs a task of its own, as the client
/// does: run it in the caller's `ServiceGroup` (it is a `Service`), or use
/// ``withDatabase(_:logger:_:)``, which runs it around a closure. Calls wait until ``run()`` has
/// connected and brought the schema up to date; once ``run()`` returned, they fail.
///
/// ```swift
/// let database = try PostgresQueueDatabase(configuration: .init(url: "postgres://app@db.internal/app"))
/// let service = SyncService(database: database)
/// let group = ServiceGroup(services: [database, service], gracefulShutdownSignals: [.sigterm], logger: logger)
/// try await group.run()
/// ```
///
/// - **Schema**: versioned migrations under the configured schema, applied by ``run()`` under an
///   advisory lock, so that instances starting together migrate once. A schema newer than this
///   version of the library is refused (``BackgroundSyncError/Code/schemaTooNew``).
/// - **Claims**: a concurrent replay leases with `FOR UPDATE SKIP LOCKED`; an ordered queue's
///   head lease keeps its replay to one worker at a time across the fleet.
/// - **A worker that dies**: each instance holds a session-level advisory lock while it runs, and
///   every lease names it. A lease whose instance's session ended (the process was killed, its
///   connection was lost) is free at once, whatever its expiry.
/// - **Wake-ups**: a push notifies (`NOTIFY`) the instances listening on the schema;
///   ``pushNotifications()`` passes them on, and ``SyncService`` syncs at once.
/// - **Durability**: pushes, dead-lettering and administration commit with the server's
///   `synchronous_commit`; replay bookkeeping (leases, failed attempts, deleting delivered entries)
///   commits with `synchronous_commit = off`: it survives a crash of any client, and a crash of the
///   server may roll it back (a delivered entry is then sent again, with its `Idempotency-Key`).
///
/// Every value is bound as a query parameter; the schema name, the one identifier in the SQL, is
/// checked against a strict pattern. The password never appears in logs or errors.
public final class PostgresQueueDatabase: QueueDatabase, Service {
    /// The configuration.
    public let configuration: Configuration
    /// `postgres://server/database?schema=…`, without credentials.
    public let identity: String

    let client: PostgresClient
    let logger: Logger
    /// The schema-qualified name prefix of the store's tables (`"schema".`).
    let prefix: String
    /// The session while it is up: the key of the session-level advisory lock this instance holds
    /// (a new one for each session, named by its leases), and its connection, which also sends the
    /// push announcements.
    let session = Locked<(key: Int64, connection: PostgresConnection)?>(nil)
    /// The `NOTIFY` channel of the schema.
    let channel: String
    let connectionConfiguration: PostgresConnection.Configuration
    private let runState = Locked(RunState())
    /// The time limits of waits for a pooled connection (see ``pooled(_:_:)``), timed in ``run()``.
    let deadlines = Deadlines()
    private let jobs: AsyncStream<Job>
    let jobInput: AsyncStream<Job>.Continuation
    private let subscribers = Locked<[UUID: AsyncStream<String>.Continuation]>([:])
    /// Queues this instance knows have a row.
    let knownQueues = Locked<Set<String>>([])
    /// Concurrent pushes waiting to share a statement.
    let pushBatcher = PushBatcher()
    /// How the store uses its connection pool (see ``leasing(_:)``).
    let poolUse = Locked(PoolUse())
    /// How many pushes ``pushDirectly(_:)`` tried, by outcome.
    let directPushes = Locked(DirectPushCounts())
    /// ``directPushes``, for tests.
    @_spi(Testing) public var directPushCounts: DirectPushCounts { directPushes.withLock { $0 } }
    /// What the announcer has to send, and what it sent.
    private struct Announcements {
        /// Queues pushed to and not announced yet.
        var unannounced: Set<String> = []
        /// How many pushes asked to be announced, and how many of the first of them a round that
        /// went through covered.
        var asked = 0
        var announced = 0
        /// How many rounds were sent, with or without success, and the shortest time between two.
        var rounds = 0
        var shortestGap: Duration?
    }
    private let announcing = Locked(Announcements())
    /// The announcer's progress, for tests: pushes asked to be announced, how many of them a round
    /// that went through covered, its rounds, and the shortest time between two rounds.
    @_spi(Testing) public var announcerProgress: (asked: Int, announced: Int, rounds: Int, shortestGap: Duration?) {
        announcing.withLock { ($0.asked, $0.announced, $0.rounds, $0.shortestGap) }
    }
    /// Whether this instance pushed anything (``announceBeforeStopping()``).
    private let pushedAny = Locked(false)
    let announcements: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation) =
        AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))

    /// A write that runs in ``run()``'s task, so that it completes when its caller is cancelled.
    /// Whoever takes it out of ``unstarted`` (the runner starting it, or ``end(_:)`` failing it)
    /// resumes its caller, exactly once.
    struct Job: Sendable {
        let id: UInt64
        let body: @Sendable () async -> Void
        let fail: @Sendable (BackgroundSyncError) -> Void
    }

    /// Writes submitted and not started yet, by id (numbered in order: an id costs no system call,
    /// as Foundation's `UUID()` does on Linux).
    let unstarted = Locked<(nextID: UInt64, jobs: [UInt64: Job])>((0, [:]))

    private struct RunState {
        var ready = false
        var ended: BackgroundSyncError?
        var waiters: [UUID: UnsafeContinuation<Void, any Error>] = [:]
    }

    /// Creates a store; nothing is connected until ``run()``. Throws
    /// ``BackgroundSyncError/Code/invalidRequest`` for a configuration that cannot work.
    public init(configuration: Configuration, logger: Logger = Logger(label: "background-sync.postgres")) throws {
        try configuration.validate()
        self.configuration = configuration
        self.identity = configuration.location
        self.logger = logger
        do {
            self.client = PostgresClient(configuration: try configuration.clientConfiguration(), backgroundLogger: logger)
            self.connectionConfiguration = try configuration.connectionConfiguration()
        } catch {
            throw BackgroundSyncError(.invalidRequest, "cannot set up TLS for the PostgreSQL store \(configuration.location): \(error)")
        }
        self.prefix = "\"\(configuration.schema)\"."
        self.channel = "bgsync_\(configuration.schema)"
        (jobs, jobInput) = AsyncStream.makeStream(of: Job.self)
    }

    /// Opens a store from a `postgres://` URL (see ``Configuration/init(url:)``).
    public convenience init(url: String, logger: Logger = Logger(label: "background-sync.postgres")) throws {
        try self.init(configuration: Configuration(url: url), logger: logger)
    }

    /// Runs `body` with a store that runs for the duration of the call, in a child task: the
    /// store is ready (connected, schema up to date) when `body` starts, and stopped when it
    /// returns or throws. A store that cannot start throws its error instead of calling `body`.
    /// Cancelling the call stops the store: writes still running then fail.
    public static func withDatabase<Value: Sendable>(
        _ configuration: Configuration, logger: Logger = Logger(label: "background-sync.postgres"),
        _ body: (PostgresQueueDatabase) async throws -> Value
    ) async throws -> Value {
        let database = try PostgresQueueDatabase(configuration: configuration, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await database.run() }
            do {
                try await database.waitUntilReady()
                let result = try await body(database)
                await database.announceBeforeStopping()
                group.cancelAll()
                try? await group.waitForAll()
                return result
            } catch {
                if !Task.isCancelled { await database.announceBeforeStopping() }
                group.cancelAll()
                try? await group.waitForAll()
                throw error
            }
        }
    }

    // MARK: Running

    /// Runs the store until cancelled or shut down gracefully: the connection pool, the schema's
    /// migrations, the session that holds this instance's lock and listens for pushes (reconnected
    /// when lost), and the writes of callers. Throws when the server cannot be reached at start, a
    /// password is refused, or the schema is newer than this library. A graceful shutdown stops it
    /// once the pushes it made are announced to the other instances.
    public func run() async throws {
        defer { end(BackgroundSyncError(.storage, "the PostgreSQL store \(identity) is not running (its run() returned)")) }
        try await withThrowingTaskGroup(of: Void.self) { stopping in
            stopping.addTask { try await self.runParts() }
            stopping.addTask {
                // Outside a service group, this waits until `run()` is cancelled.
                guard (try? await gracefulShutdown()) != nil else { return }
                await self.announceBeforeStopping()
            }
            // The parts end only when cancelled or failing to start; the other task, on a graceful
            // shutdown once it announced, or when cancelled. Either way the store stops.
            try await stopping.next()
            stopping.cancelAll()
        }
    }

    /// The parts of ``run()``, until cancelled.
    private func runParts() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.client.run()
                // The pool stops by itself on a graceful shutdown; the store stops when `run()`
                // says (once it announced what waits, on the session's connection).
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(3_600)) }
            }
            group.addTask { await self.deadlines.run(every: .milliseconds(250)) }
            let session: PostgresConnection
            do {
                // The session's connection is opened directly, not from the pool: a server that
                // cannot be reached, or refuses the login, is reported at once with the reason.
                session = try await self.openSession()
                do {
                    try await self.onLoop(of: session) { try await self.migrate(session) }
                } catch {
                    try? await session.close()
                    throw error
                }
            } catch {
                let failure = self.mapError(error, action: "open")
                self.end(failure)
                group.cancelAll()
                throw failure
            }
            group.addTask { await self.keepSession(session) }
            group.addTask { await self.announce() }
            group.addTask {
                await withDiscardingTaskGroup { writes in
                    for await job in self.jobs {
                        // A stream that always has a job waiting does not end when the task is
                        // cancelled: the jobs left are failed by `end(_:)`.
                        if Task.isCancelled { break }
                        guard self.unstarted.withLock({ $0.jobs.removeValue(forKey: job.id) }) != nil else { continue }
                        writes.addTask { await job.body() }
                    }
                }
            }
            self.markReady()
            try await group.next()
            group.cancelAll()
        }
    }

    /// Waits until ``run()`` is ready; throws if it ended, or if the caller is cancelled (a store
    /// whose ``run()`` was never started would keep it waiting).
    func waitUntilReady() async throws {
        // Most calls find the store running: no wait to set up.
        let now = runState.withLock { state -> Result<Void, any Error>? in
            if let ended = state.ended { return .failure(ended) }
            return state.ready ? .success(()) : nil
        }
        if let now { return try now.get() }
        let id = UUID()
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                let outcome = runState.withLock { state -> Result<Void, any Error>? in
                    if let ended = state.ended { return .failure(ended) }
                    if state.ready { return .success(()) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiters[id] = continuation
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            runState.withLock { $0.waiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
    }

    private func markReady() {
        let waiters = runState.withLock { state in
            state.ready = true
            defer { state.waiters = [:] }
            return state.waiters.values
        }
        for waiter in waiters { waiter.resume() }
    }

    private func end(_ error: BackgroundSyncError) {
        let waiters = runState.withLock { state in
            if state.ended == nil { state.ended = error }
            state.ready = false
            defer { state.waiters = [:] }
            return state.waiters.values
        }
        for waiter in waiters { waiter.resume(throwing: error) }
        jobInput.finish()
        let jobs = unstarted.withLock { unstarted in
            defer { unstarted.jobs = [:] }
            return Array(unstarted.jobs.values)
        }
        for job in jobs { job.fail(error) }
        for subscriber in subscribers.withLock({ Array($0.values) }) { subscriber.finish() }
    }

    // MARK: Notifications

    public func pushNotifications() -> AsyncStream<String>? {
        let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(64))
        let id = UUID()
        continuation.onTermination = { [weak self] _ in
            _ = self?.subscribers.withLock { $0.removeValue(forKey: id) }
        }
        let ended = runState.withLock { $0.ended != nil }
        if ended {
            continuation.finish()
        } else {
            subscribers.withLock { $0[id] = continuation }
        }
        return stream
    }

    /// Tells the other instances that a queue was pushed to, once the push committed: the
    /// announcer sends the `NOTIFY`s apart from the pushes, on the session's connection, a burst of
    /// pushes making one notification per queue. A `NOTIFY` in the push's own transaction would
    /// hold PostgreSQL's notification lock through that commit's flush, and concurrent pushes would
    /// wait for each other. A push made while the session is down is announced once the next session
    /// listens; one made by a process that dies before announcing it is left to the others' poll.
    func announcePush(_ queueName: String) {
        pushedAny.withLock { $0 = true }
        announcing.withLock { state in
            state.unannounced.insert(queueName)
            state.asked += 1
        }
        announcements.continuation.yield()
    }

    /// The shortest time between two rounds of announcements (see ``announce()``).
    @_spi(Testing) public static let announcementInterval = Duration.milliseconds(5)

    /// Sends the announcements, until cancelled.
    ///
    /// A round of announcements goes out as soon as a push asks for one, unless the previous
    /// round started less than ``announcementInterval`` before: then it waits for the rest of
    /// that time (and for the previous round's statements to end), and carries every queue pushed
    /// to meanwhile. So the first push after a quiet spell wakes the other instances at once, a
    /// later push about that long after its commit, and a producer pushing back to back sends one
    /// notification per queue per interval instead of one per push: each costs a statement on the
    /// session's connection and wakes every listening instance, and PostgreSQL serializes the
    /// commits of transactions that notify. What waits when the store stops is announced by
    /// ``announceBeforeStopping()``.
    ///
    /// PostgresNIO loses a query written to a connection that has just closed: its result never
    /// comes. So a notification is checked and written on the connection's event loop (open there,
    /// its handler fails the query if it closes; see ``ensureOpen(_:)``), and its result is awaited
    /// for at most 5 seconds.
    private func announce() async {
        var lastRound: ContinuousClock.Instant?
        for await _ in announcements.stream {
            if let lastRound {
                let ready = lastRound + Self.announcementInterval
                if ContinuousClock.now < ready { try? await Task.sleep(until: ready, clock: .continuous) }
            }
            // Stopping: the session closes with the store, which announces what waits itself.
            if Task.isCancelled { break }
            let now = ContinuousClock.now
            let (names, asked) = announcing.withLock { state -> (Set<String>, Int) in
                defer { state.unannounced = [] }
                guard !state.unannounced.isEmpty else { return ([], 0) }
                state.rounds += 1
                if let lastRound { state.shortestGap = min(state.shortestGap ?? now - lastRound, now - lastRound) }
                return (state.unannounced, state.asked)
            }
            guard !names.isEmpty else { continue }
            lastRound = now
            // Many queues at once: one notification for all of them.
            let payloads = names.count > 8 ? [""] : names.map(Self.notifyPayload)
            var sent = true
            for payload in payloads where !(await notify(payload)) {
                // No session now, or it failed: the names wait for the next session (it sends them
                // as it listens) or the next push.
                announcing.withLock { $0.unannounced.formUnion(names) }
                sent = false
                break
            }
            if sent { announcing.withLock { $0.announced = max($0.announced, asked) } }
        }
    }

    /// Sends one notification on the session's connection: `true` once PostgreSQL took it, `false`
    /// when there is no session, the statement failed, or 5 seconds passed.
    private func notify(_ payload: String) async -> Bool {
        guard let connection = session.withLock({ $0?.connection }) else { return false }
        let eventLoop = connection.eventLoop
        let query = eventLoop.flatSubmit { [channel, identity] () -> EventLoopFuture<PostgresQueryResult> in
            guard !connection.isClosed else {
                return eventLoop.makeFailedFuture(
                    BackgroundSyncError(.storeUnreachable, "the connection to the PostgreSQL store \(identity) closed"))
            }
            return connection.query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)", [PostgresData(string: channel), PostgresData(string: payload)])
        }
        let sent = Locked<Bool?>(nil)
        return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let finish: @Sendable (Bool) -> Void = { ok in
                if sent.withLock({ outcome in defer { outcome = outcome ?? ok }; return outcome == nil }) {
                    continuation.resume(returning: ok)
                }
            }
            query.whenComplete { result in
                if case .success = result { finish(true) } else { finish(false) }
            }
            eventLoop.scheduleTask(in: .seconds(5)) { finish(false) }
        }
    }

    /// For an instance about to stop (``withDatabase(_:logger:_:)`` once its body returned,
    /// ``run()`` on a graceful shutdown): if it pushed anything, one more notification for every queue, so that a push whose own
    /// notification the stop would cut off still wakes the other instances (an idle `SyncService`
    /// that does not poll would otherwise learn of it only with a later push).
    func announceBeforeStopping() async {
        guard pushedAny.withLock({ $0 }) else { return }
        let asked = announcing.withLock { $0.asked }
        if await notify("") { announcing.withLock { $0.announced = max($0.announced, asked) } }
    }

    func broadcast(_ queueName: String) {
        for subscriber in subscribers.withLock({ Array($0.values) }) { subscriber.yield(queueName) }
    }

}

extension Result where Failure == any Error {
    /// The outcome of an async throwing closure.
    init(catching body: () async throws -> Success) async {
        do {
            self = .success(try await body())
        } catch {
            self = .failure(error)
        }
    }
}

/// How many pushes a store wrote in their callers' tasks, by outcome (see
/// ``PostgresQueueDatabase/directPushCounts``).
@_spi(Testing) public struct DirectPushCounts: Sendable {
    /// Written and answered.
    public var written = 0
    /// Written, and failed.
    public var failed = 0
    /// Not written: made the usual way.
    public var notSent = 0
}
