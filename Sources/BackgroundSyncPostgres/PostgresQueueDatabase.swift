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
    let announcing = Locked(Announcements())
    /// The shortest time between two rounds of announcements (``announcementInterval``).
    let announcementIntervalValue = Locked(Duration.milliseconds(5))
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
    /// password is refused, or the schema is newer than this library; returns when cancelled or
    /// shut down, also before it was ready. On a graceful shutdown its pool closes its connections
    /// (statements under way fail), and once they have let go (at most 5 seconds) it announces
    /// its pushes to the other instances on its session (``announceBeforeStopping()``) and stops.
    public func run() async throws {
        defer { end(BackgroundSyncError(.storage, "the PostgreSQL store \(identity) is not running (its run() returned)")) }
        try await withThrowingTaskGroup(of: Void.self) { stopping in
            stopping.addTask { try await self.runParts() }
            stopping.addTask {
                // Outside a service group, this waits until `run()` is cancelled.
                guard (try? await gracefulShutdown()) != nil else { return }
                // The pool closes its connections on the same shutdown and takes no new statement:
                // the pushes to announce are those committed once the statements cut off let go.
                await self.waitForStatementsToEnd(atMost: .seconds(5))
                await self.announceBeforeStopping()
            }
            // The parts end only when cancelled or failing to start; the other task, on a graceful
            // shutdown once it announced, or when cancelled. Either way the store stops, and
            // throws a failure to start.
            try await stopping.next()
            stopping.cancelAll()
            try await stopping.waitForAll()
        }
    }

    /// The parts of ``run()``, until cancelled.
    private func runParts() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.client.run()
                // The pool stops by itself on a graceful shutdown; the store stops when `run()`
                // cancels it (once it announced its pushes on the session's connection).
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
                group.cancelAll()
                // Stopped while starting: no failure of the store's.
                if Task.isCancelled {
                    self.end(BackgroundSyncError(.storage, "the PostgreSQL store \(self.identity) stopped before it was ready"))
                    return
                }
                let failure = self.mapError(error, action: "open")
                self.end(failure)
                throw failure
            }
            group.addTask { await self.keepSession(session) }
            group.addTask { await self.keepPoolAlive() }
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

    func broadcast(_ queueName: String) {
        for subscriber in subscribers.withLock({ Array($0.values) }) { subscriber.yield(queueName) }
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
