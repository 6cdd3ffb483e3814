import Foundation
import Logging
import ServiceLifecycle

/// Runs the syncs of a set of queues automatically: the role the browser plays for Workbox.
///
/// A `ServiceLifecycle.Service`: run it in a `ServiceGroup` (or call ``run()``). It dispatches a
/// ``SyncEvent`` for a queue's registered tag
/// - at start (the fallback path: whatever a previous run left registered),
/// - as soon as a tag is registered while online (a push while the network is up),
/// - when connectivity returns (``ConnectivityMonitor``): queues whose head failed for lack of a
///   response are tried at once; those the server asked to wait (`Retry-After`, 5xx backoff) keep
///   their schedule,
/// - when the head entry's backoff ends (the retry timer),
/// - when another process pushes to a store that tells of it (``QueueDatabase/pushNotifications()``:
///   PostgreSQL's `NOTIFY`), and at each ``Configuration/pollInterval`` when one is set (the only
///   way to see other processes' pushes to a store that does not tell of them).
///
/// `lastChance` is set when the head entry's next attempt is its last (``RetryPolicy/maxAttempts``).
/// Registrations live in the database, so a restarted service resumes them. On graceful shutdown it
/// stops starting syncs, lets the sends in flight finish (their entries are deleted or released),
/// and returns.
public final class SyncService: Service {
    /// How the service runs. Every parameter has a default.
    public struct Configuration: Sendable {
        /// The connectivity source; `nil` assumes the network is always up. Default:
        /// ``ConnectivityMonitors/system()`` (netlink on Linux, `NWPathMonitor` on Apple platforms).
        public var connectivity: (any ConnectivityMonitor)?
        /// The clock of the retry timer. Default: ``SystemWallClock``.
        public var clock: any WallClock
        /// Where the service logs. Default: a logger labelled `background-sync.service`.
        public var logger: Logger
        /// How often to look at the database for work other processes left (new queues, new
        /// registrations); `nil` never looks, which suits a process that is the only writer.
        /// Default: `nil`. `bgsync run` uses 1 second.
        public var pollInterval: Duration?

        /// Creates a configuration; every parameter has its default.
        public init(
            connectivity: (any ConnectivityMonitor)? = ConnectivityMonitors.system(),
            clock: any WallClock = SystemWallClock(),
            logger: Logger = Logger(label: "background-sync.service"),
            pollInterval: Duration? = nil
        ) {
            self.connectivity = connectivity
            self.clock = clock
            self.logger = logger
            self.pollInterval = pollInterval
        }
    }

    /// Why a round of syncs runs.
    enum Trigger: Sendable {
        case start
        case registered
        case connectivity(ConnectivityStatus)
        case timer
        case poll
        /// Another instance of the store pushed (``QueueDatabase/pushNotifications()``).
        case pushed
        case shutdown
    }

    /// Where queues come from: a fixed list, or every queue of a database.
    private enum Source {
        case fixed(SyncManager?)
        case discovered(
            database: any QueueDatabase, options: @Sendable (String) -> QueueOptions, transport: any HTTPTransport,
            manager: SyncManager)
    }

    private let source: Source
    private let queueList: Locked<[Queue]>

    /// The queues whose syncs the service runs (with ``init(database:options:transport:configuration:)``,
    /// those found so far).
    public var queues: [Queue] { queueList.withLock { $0 } }
    /// The configuration.
    public let configuration: Configuration
    /// When to look at a queue again when its head carries no schedule: after a sync that failed
    /// without recording anything on the head (a custom `onSync`), or that found the head or the
    /// entries left held by another replayer. For each tag: failures in a row, when to try again,
    /// and the head entry as it was before that sync (a head that moved since has its own
    /// schedule, or is due at once).
    private let tagRetries = Locked<[String: (failures: Int, next: Date, head: HeadState)]>([:])

    /// A queue's head entry, as far as scheduling goes.
    private struct HeadState: Equatable {
        var id: Int64?
        var nextAttemptAt: Date?

        init(_ head: QueueStoreEntry?) {
            id = head?.id
            nextAttemptAt = head?.nextAttemptAt
        }
    }
    private let shuttingDown = Locked(false)
    /// Whether a graceful shutdown reached the service (for tests).
    var isShuttingDown: Bool { shuttingDown.withLock { $0 } }

    /// Creates a service for `queues`, which must share one ``SyncManager`` (they do when they
    /// share a database and were not given managers).
    public init(queues: [Queue], configuration: Configuration = Configuration()) {
        self.source = .fixed(queues.first?.syncManager)
        self.queueList = Locked(queues)
        self.configuration = configuration
    }

    /// Creates a service for `queues` and the queues of `outboxes` (``Outbox/queue``): their syncs
    /// run as those of any queue.
    public convenience init(
        queues: [Queue] = [], outboxes: [any OutboxSyncing], configuration: Configuration = Configuration()
    ) {
        self.init(queues: queues + outboxes.map(\.queue), configuration: configuration)
    }

    /// Creates a service for every queue of `database`, those there at start and those other
    /// processes create later (seen at each ``Configuration/pollInterval``), each opened with
    /// `options`, sending through `transport`: what `bgsync run` does. Outboxes (`outbox:` queues)
    /// are left alone: only the app that owns one can upload its records.
    public convenience init(
        database: any QueueDatabase, options: QueueOptions = QueueOptions(),
        transport: any HTTPTransport = URLSessionTransport(), configuration: Configuration = Configuration()
    ) {
        self.init(database: database, transport: transport, configuration: configuration, optionsForQueue: { _ in options })
    }

    /// Creates a service for every queue of `database`, as ``init(database:options:transport:configuration:)``
    /// does, each opened with the options `optionsForQueue` gives for its name (a queue replayed
    /// with several entries in flight, others in order: `bgsync run --concurrent`). Every process
    /// replaying a store must give a queue the same options.
    public init(
        database: any QueueDatabase, transport: any HTTPTransport = URLSessionTransport(),
        configuration: Configuration = Configuration(), optionsForQueue: @escaping @Sendable (String) -> QueueOptions
    ) {
        self.source = .discovered(
            database: database, options: optionsForQueue, transport: transport, manager: SyncManager.shared(for: database))
        self.queueList = Locked([])
        self.configuration = configuration
    }

    /// Opens the queues of the database that the service does not run yet.
    private func discoverQueues() async throws {
        guard case .discovered(let database, let options, let transport, let manager) = source else { return }
        let known = Set(queues.map(\.name))
        // An outbox's records are uploaded by the app's closure, which only the app has.
        for name in try await database.queueNames() where !known.contains(name) && !name.hasPrefix(Queue.outboxNamePrefix) {
            let queue = try Queue(
                name: name, options: options(name), database: database, transport: transport, syncManager: manager)
            queueList.withLock { $0.append(queue) }
            configuration.logger.info("replaying queue", metadata: ["queue": "\(name)"])
        }
    }

    /// The store the service's queues live on: the database it was given, or its first queue's.
    private var storeDatabase: (any QueueDatabase)? {
        switch source {
        case .fixed: queues.first?.database
        case .discovered(let database, _, _, _): database
        }
    }

    /// The manager that runs the service's syncs: that of its queues, or of its database; `nil`
    /// for a service without queues.
    public var syncManager: SyncManager? {
        switch source {
        case .fixed(let first): first
        case .discovered(_, _, _, let manager): manager
        }
    }

    /// The manager of the service's queues (`nil` when it has none), with the queues of a database
    /// discovered so far.
    private func resolveManager() async throws -> SyncManager? {
        let manager: SyncManager
        switch source {
        case .fixed(let first):
            guard let first else { return nil }
            manager = first
        case .discovered(_, _, _, let shared):
            manager = shared
            try await discoverQueues()
        }
        guard queues.allSatisfy({ $0.syncManager === manager }) else {
            throw BackgroundSyncError(.invalidRequest, "the queues of a SyncService must share one SyncManager")
        }
        return manager
    }

    /// Runs, in the calling task, one round of the syncs that are due now (registered, not paused,
    /// the head entry out of its backoff), concurrently, and returns when they are done: for a
    /// process that is woken up for a short while, such as an iOS background task, instead of
    /// ``run()``. Cancelling the calling task stops the replays after the sends in flight.
    public func runDueSyncs() async throws {
        guard let manager = try await resolveManager() else { return }
        await syncDue(.start, manager: manager)
    }

    /// When the next sync is due: now when a registered queue can sync at once, the end of the
    /// earliest backoff otherwise, `nil` when no registered queue waits (nothing to schedule).
    /// What an iOS background task request takes as its earliest begin date.
    public func nextDueDate() async throws -> Date? {
        guard let manager = try await resolveManager() else { return nil }
        let now = configuration.clock.now
        return try await registeredDueDates(manager: manager, now: now).map { max($0 ?? now, now) }.min()
    }

    /// Runs the service until graceful shutdown or cancellation: the connectivity monitor, the
    /// registration watcher, the retry timer and the syncs are child tasks of this call, so
    /// cancelling it stops them all (a running replay gives its entries back untouched).
    public func run() async throws {
        guard let manager = try await resolveManager() else { return }
        // Entries left without a registration (a sync dropped on its last chance, a crash between
        // commit and registration) are synced too: nothing waits for a push that may never come.
        for queue in queues where try await queue.size() > 0 {
            await queue.registerSync()
        }
        // Workbox's fallback path: the queues that ask for it run their sync at start.
        for queue in queues where queue.options.forceSyncFallback {
            await queue.runFallbackSync()
        }
        let (triggers, trigger) = AsyncStream.makeStream(of: Trigger.self)
        // Subscribe before the start-up round, so that no registration falls between the two.
        let registrations = manager.registrations()
        let statuses = configuration.connectivity?.statusUpdates()
        // Pushes by other processes, from a store that tells of them; coalesced as registrations are.
        let pushes = storeDatabase?.pushNotifications()
        let pushQueued = Locked(false)
        // A burst of pushes (one registration each) makes one sync round, not one round per push:
        // a `.registered` trigger is queued only when none is waiting.
        let registrationQueued = Locked(false)
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                if let statuses {
                    group.addTask {
                        for await status in statuses {
                            trigger.yield(.connectivity(status))
                        }
                    }
                }
                group.addTask { await Self.coalesce(registrations, into: .registered, queued: registrationQueued, trigger) }
                if let pushes {
                    group.addTask { await Self.coalesce(pushes, into: .pushed, queued: pushQueued, trigger) }
                }
                let timer = SyncTimer()
                group.addTask { [configuration] in
                    await timer.run(clock: configuration.clock) { trigger.yield(.timer) }
                }
                if let interval = configuration.pollInterval {
                    let clock = configuration.clock
                    group.addTask {
                        while !Task.isCancelled {
                            try await clock.sleep(until: clock.now.addingTimeInterval(interval.timeInterval))
                            trigger.yield(.poll)
                        }
                    }
                }
                try await loop(
                    triggers: triggers, timer: timer, manager: manager, registrationQueued: registrationQueued,
                    pushQueued: pushQueued)
                group.cancelAll()
            }
        } onGracefulShutdown: { [shuttingDown] in
            // Replays running in this task's children see `Task.isShuttingDownGracefully` and stop
            // after the sends in flight.
            shuttingDown.withLock { $0 = true }
            trigger.yield(.shutdown)
        }
        configuration.logger.info("sync service stopped")
    }

    /// Turns each element of `stream` into `round`, unless one is queued already (`queued`, which
    /// the loop clears as it starts that round).
    private static func coalesce(
        _ stream: AsyncStream<String>, into round: Trigger, queued: Locked<Bool>, _ trigger: AsyncStream<Trigger>.Continuation
    ) async {
        for await _ in stream {
            let first = queued.withLock { queued -> Bool in
                defer { queued = true }
                return !queued
            }
            if first { trigger.yield(round) }
        }
    }

    private func loop(
        triggers: AsyncStream<Trigger>, timer: SyncTimer, manager: SyncManager, registrationQueued: Locked<Bool>,
        pushQueued: Locked<Bool>
    ) async throws {
        // Unknown until the monitor speaks; without a monitor, assume online.
        var online = configuration.connectivity == nil
        var iterator = triggers.makeAsyncIterator()
        var next: Trigger? = .start
        while let current = next {
            if shuttingDown.withLock({ $0 }) { return }
            switch current {
            case .shutdown:
                return
            case .connectivity(let status):
                let regained = status == .online && !online
                online = status == .online
                configuration.logger.debug("connectivity changed", metadata: ["status": "\(status)"])
                if regained { await syncDue(.connectivity(.online), manager: manager) }
            case .registered:
                // Registrations from now on need a new round.
                registrationQueued.withLock { $0 = false }
                if online { await syncDue(current, manager: manager) }
            case .start, .timer:
                if online { await syncDue(current, manager: manager) }
            case .poll, .pushed:
                if case .pushed = current { pushQueued.withLock { $0 = false } }
                do {
                    try await discoverQueues()
                } catch {
                    configuration.logger.info("cannot list the queues", metadata: ["error": "\(error)"])
                }
                if online { await syncDue(current, manager: manager) }
            }
            // Wait for the next trigger, or for the earliest backoff deadline.
            timer.set(online ? try? await nextDeadline(manager: manager) : nil)
            next = await iterator.next()
        }
    }

    /// The earliest time a registered queue's sync becomes due, if one is waiting on a backoff.
    private func nextDeadline(manager: SyncManager) async throws -> Date? {
        try await registeredDueDates(manager: manager, now: configuration.clock.now).compactMap { $0 }.min()
    }

    /// ``dueDate(_:head:now:)`` of each registered queue that is not paused.
    private func registeredDueDates(manager: SyncManager, now: Date) async throws -> [Date?] {
        let tags = Set(try await manager.getTags())
        var dates: [Date?] = []
        for queue in queues where tags.contains(queue.syncTag) {
            if await queue.isPaused { continue }
            dates.append(dueDate(queue, head: try await queue.headEntry(), now: now))
        }
        return dates
    }

    /// When the queue's sync is due: its head entry's next attempt while that is ahead; else the
    /// tag's own backoff after a sync that failed without recording anything on the head (a custom
    /// `onSync` that threw, a head another process holds) while that head is still there, and at
    /// once once another head took its place; `nil` when nothing holds it back.
    private func dueDate(_ queue: Queue, head: QueueStoreEntry?, now: Date) -> Date? {
        if let next = head?.nextAttemptAt, next > now { return next }
        guard let retry = tagRetries.withLock({ $0[queue.syncTag] }) else { return head?.nextAttemptAt }
        guard retry.head == HeadState(head) else { return head?.nextAttemptAt ?? now }
        return retry.next
    }

    /// Dispatches the sync of every registered queue that is due, concurrently.
    private func syncDue(_ trigger: Trigger, manager: SyncManager) async {
        let now = configuration.clock.now
        let tags: Set<String>
        do {
            tags = Set(try await manager.getTags())
        } catch {
            configuration.logger.info("cannot read sync registrations", metadata: ["error": "\(error)"])
            return
        }
        await withTaskGroup(of: Void.self) { group in
            for queue in queues where tags.contains(queue.syncTag) {
                if await queue.isPaused { continue }
                let head: QueueStoreEntry?
                do {
                    head = try await queue.headEntry()
                } catch {
                    configuration.logger.info("cannot read queue", metadata: ["queue": "\(queue.name)", "error": "\(error)"])
                    continue
                }
                let due = dueDate(queue, head: head, now: now)
                // Times make a round trip through the database as seconds since 1970; allow for the rounding.
                var isDue = due.map { $0.timeIntervalSince(now) <= 0.001 } ?? true
                if case .connectivity = trigger, head?.lastFailure?.kind == .noResponse { isDue = true }
                guard isDue, !shuttingDown.withLock({ $0 }) else { continue }
                let lastChance = queue.options.retryPolicy.isLastAttempt(afterAttempts: head?.attempts ?? 0)
                group.addTask {
                    await self.dispatch(queue, lastChance: lastChance, head: HeadState(head), manager: manager)
                }
            }
        }
    }

    private func dispatch(_ queue: Queue, lastChance: Bool, head: HeadState, manager: SyncManager) async {
        let event = SyncEvent(tag: queue.syncTag, lastChance: lastChance)
        // Another replayer (another process, another worker of a fleet) holds the head, or the
        // entries left: look again in a second, without counting a failure (at once if the head
        // changed: entries another process pushed). A lease is free the moment it is given back
        // or its holder dies.
        let lookAgainSoon = { [configuration, tagRetries] (failures: Int?) in
            tagRetries.withLock { retries in
                retries[queue.syncTag] = (
                    failures ?? retries[queue.syncTag]?.failures ?? 0, configuration.clock.now.addingTimeInterval(1), head
                )
            }
        }
        do {
            // A sync that succeeded while its queue still holds entries (held by another
            // replayer, or pushed by another process meanwhile) keeps its registration.
            if try await manager.run(event) {
                lookAgainSoon(0)
            } else {
                tagRetries.withLock { $0[queue.syncTag] = nil }
            }
        } catch let error as BackgroundSyncError where error.isBusyHead {
            lookAgainSoon(nil)
        } catch {
            let now = configuration.clock.now
            tagRetries.withLock { retries in
                let failures = (retries[queue.syncTag]?.failures ?? 0) + 1
                var random = SystemRandomNumberGenerator()
                let delay = queue.options.retryPolicy.delay(afterAttempts: failures, using: &random)
                retries[queue.syncTag] = (failures, now.addingTimeInterval(delay.timeInterval), head)
            }
            configuration.logger.debug(
                "sync failed; it stays registered",
                metadata: ["tag": "\(event.tag)", "last-chance": "\(lastChance)", "error": "\(error)"])
        }
    }
}
