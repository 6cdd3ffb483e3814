import Foundation
import Logging
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A durable queue of HTTP requests that are replayed when a sync of the queue runs: the Swift
/// counterpart of Workbox's `Queue`.
///
/// ```swift
/// let queue = try Queue(name: "posts")
/// let result = try await queue.send(request)    // tried now; stored (and a sync registered) if it failed
/// try await queue.replayRequests()              // or: a SyncEvent for queue.syncTag
/// ```
///
/// - Durability: ``pushRequest(_:)`` returns once the entry is committed to the database.
/// - Order: entries are replayed first in, first out; ``unshiftRequest(_:)`` puts one before the
///   queue's head without touching other queues.
/// - Replay never deletes an entry before the server answered, and stops at the first entry that
///   cannot be delivered now (it stays at the head). See ``replayRequests()``.
/// - Two live queues with one name on one database are refused; the name is free again once the
///   queue is released.
///
/// The queue is the facade: it captures requests (``QueueOptions`` say how), keeps the sync rules,
/// and hands replays to the replay runner, which works on the database's ``ReplayClaims``.
public actor Queue {
    /// The queue's name.
    public nonisolated let name: String
    /// The shortest ``QueueOptions/leaseDuration`` a queue accepts.
    static let minimumLeaseDuration: Duration = .seconds(1)
    /// The sync tag of the queue: `background-sync:<name>`.
    public nonisolated let syncTag: String

    /// The sync tag of the queue named `name` (its ``syncTag``): `background-sync:` and the name.
    /// A tool that changes a store without a `Queue` (requeueing dead letters, say) registers
    /// it so that the services running the queue replay it.
    public static func syncTag(forQueueNamed name: String) -> String {
        "background-sync:" + name
    }

    /// The options the queue was created with.
    public nonisolated let options: QueueOptions
    /// The database holding the entries.
    public nonisolated let database: any QueueDatabase
    /// The transport replays go through.
    public nonisolated let transport: any HTTPTransport
    /// The manager that runs the queue's syncs.
    public nonisolated let syncManager: SyncManager

    nonisolated let store: QueueStore
    nonisolated let reporter: QueueReporter
    nonisolated let capture: RequestCapture
    nonisolated let control: ReplayControl
    nonisolated let runner: ReplayRunner
    private nonisolated let reservation: QueueNameRegistry.Reservation
    private nonisolated let handlerToken = UUID()
    /// Read and written by `pushRequest` without entering the actor, so that producers never queue
    /// behind a replay (and pay no actor hop on the hot path).
    nonisolated let syncState = Locked((inProgress: false, requestsAdded: false))
    /// Whether the sync manager keeps its registrations in this queue's database, so that a push
    /// can register the tag in the entry's own transaction (fixed at creation).
    private nonisolated let registersWithEntries: Bool
    /// The replay running now, which other callers of ``replayRequests()`` join.
    var runningReplay: ReplayJoin?
    /// Whether the ``QueueOptions/forceSyncFallback`` sync ran.
    var fallbackSyncDone = false

    /// Creates a queue.
    ///
    /// - Parameters:
    ///   - name: unique among the live queues of `database`.
    ///   - options: retention, sync behaviour, logging.
    ///   - database: where entries are stored; default: ``SQLiteQueueDatabase/shared(path:)`` at
    ///     ``SQLiteQueueDatabase/defaultPath()``.
    ///   - transport: how replays are sent; default: ``URLSessionTransport``.
    ///   - syncManager: who runs the queue's syncs; default: ``SyncManager/shared(for:)`` of the database.
    /// - Throws: ``BackgroundSyncError/Code/duplicateQueueName`` when a live queue has the name,
    ///   ``BackgroundSyncError/Code/invalidRequest`` for an empty name or a
    ///   ``QueueOptions/leaseDuration`` under 1 second, or a storage error when the default database
    ///   cannot be opened.
    public init(
        name: String,
        options: QueueOptions = QueueOptions(),
        database: (any QueueDatabase)? = nil,
        transport: any HTTPTransport = URLSessionTransport(),
        syncManager: SyncManager? = nil
    ) throws {
        guard !name.isEmpty else {
            throw BackgroundSyncError(.invalidRequest, "a queue name cannot be empty")
        }
        // Entries leased ahead are leased again once half the lease is gone: half a lease shorter
        // than a lease's own commit would lease forever and send nothing.
        guard options.leaseDuration >= Self.minimumLeaseDuration else {
            throw BackgroundSyncError(
                .invalidRequest, "leaseDuration must be at least 1 second, not \(options.leaseDuration)", queueName: name)
        }
        let database = try database ?? SQLiteQueueDatabase.shared()
        self.name = name
        self.syncTag = Self.syncTag(forQueueNamed: name)
        self.options = options
        self.database = database
        self.transport = transport
        self.syncManager = syncManager ?? SyncManager.shared(for: database)
        self.registersWithEntries = self.syncManager.persists(in: database)
        let store = QueueStore(queueName: name, database: database)
        self.store = store
        let reporter = QueueReporter(queueName: name, options: options) { try await store.size() }
        self.reporter = reporter
        let capture = RequestCapture(options: options, logger: reporter.logger)
        self.capture = capture
        let control = ReplayControl()
        self.control = control
        self.runner = ReplayRunner(
            queueName: name, options: options, database: database, transport: transport, owner: .current(),
            capture: capture, reporter: reporter, control: control, random: Locked(SystemRandomNumberGenerator()))
        self.reservation = try QueueNameRegistry.reserve(name, on: database)
        // The store that keeps the registrations looks for the queue's pending entries only when it
        // holds them; a custom onSync may leave entries on purpose: its success consumes the
        // registration.
        let ownReplay = options.onSync == nil && registersWithEntries
        try self.syncManager.addHandler(tag: syncTag, token: handlerToken, queueName: ownReplay ? name : nil) {
            [weak self] event in
            guard let self else {
                throw BackgroundSyncError(.unknownSyncTag, "the queue of the sync tag '\(event.tag)' was released")
            }
            try await self.handleSync(event)
        }
    }

    deinit {
        syncManager.removeHandler(tag: syncTag, token: handlerToken)
        reservation.release()
        reporter.finish()
    }

    /// A stream of the queue's events (enqueued, replayed with the response, retry scheduled,
    /// dead-lettered, expired, paused, resumed), each with the queue size after it. Each call
    /// returns a new stream; it ends when the queue is released. Up to 1,000 unread events are kept.
    public nonisolated func events() -> AsyncStream<QueueEvent> {
        reporter.events()
    }

    // MARK: - Adding

    /// Stores a request at the end of the queue and registers a sync (during a sync, notes instead
    /// that one must be registered again afterwards). Returns once the entry is committed; returns
    /// its id.
    @discardableResult
    public nonisolated func pushRequest(_ entry: QueueEntry) async throws -> Int64 {
        try await add(entry, at: .tail)
    }

    /// Stores a request with the current time and `metadata` at the end of the queue.
    @discardableResult
    public nonisolated func pushRequest(_ request: URLRequest, metadata: [String: String]? = nil) async throws -> Int64 {
        try await add(QueueEntry(request: request, timestamp: options.clock.now, metadata: metadata), at: .tail)
    }

    /// Stores a request at the head of the queue (before every entry of this queue only) and
    /// registers a sync. Returns its id.
    @discardableResult
    public nonisolated func unshiftRequest(_ entry: QueueEntry) async throws -> Int64 {
        try await add(entry, at: .head)
    }

    private nonisolated func add(_ entry: QueueEntry, at end: QueueEnd) async throws -> Int64 {
        try await add(captured: capture.capture(entry), at: end)
    }

    /// Stores an entry already captured (its idempotency key set, its secrets protected).
    nonisolated func add(captured stored: UnidentifiedQueueStoreEntry, at end: QueueEnd) async throws -> Int64 {
        try await write(stored) { [database, name] tag in
            try await database.pushEntry(stored, queueName: name, at: end, registeringSyncTag: tag)
        }
    }

    /// Stores an entry by its record key (see ``QueueDatabase/saveEntry(_:queueName:registeringSyncTag:)``).
    nonisolated func save(captured stored: UnidentifiedQueueStoreEntry) async throws -> Int64 {
        try await write(stored) { [database, name] tag in
            try await database.saveEntry(stored, queueName: name, registeringSyncTag: tag)
        }
    }

    /// Runs a write that stores an entry, and applies the sync rules: the tag is registered with
    /// the entry, or after it, or (during a sync) noted for after the sync.
    private nonisolated func write(
        _ stored: UnidentifiedQueueStoreEntry, _ body: (_ syncTag: String?) async throws -> PushedEntry
    ) async throws -> Int64 {
        // Outside a sync, the registration is written with the entry when the manager keeps its
        // registrations in the same database: one transaction, one fsync.
        let registersWithEntry = registersWithEntries && !syncState.withLock { $0.inProgress }
        let pushed = try await body(registersWithEntry ? syncTag : nil)
        await reporter.enqueued(pushed, method: stored.requestData.method)
        let duringSync = syncState.withLock { state -> Bool in
            if state.inProgress { state.requestsAdded = true }
            return state.inProgress
        }
        if registersWithEntry {
            syncManager.noteRegistered(syncTag)
        } else if !duringSync {
            await registerSync()
        }
        return pushed.id
    }

    // MARK: - Removing and reading

    /// Removes and returns the last entry, skipping (and deleting) expired ones; `nil` when empty.
    ///
    /// Workbox's semantics, and their cost: the entry is deleted (durably) *before* the caller
    /// does anything with it. A process killed before the caller sent it or pushed it back loses
    /// it, and ``unshiftRequest(_:)`` stores it again as a new entry (new id, attempts and failure
    /// history reset). A sync handler that must not lose requests uses ``replayRequests()`` (entries
    /// are leased and deleted only after the server answered) or an ``Outbox``.
    public func popRequest() async throws -> QueueEntry? {
        try await removeUnexpired { try await $0.popEntry() }
    }

    /// Removes and returns the first entry, skipping (and deleting) expired ones; `nil` when empty.
    /// Deleted before the caller sends it: see ``popRequest()`` for what that costs.
    public func shiftRequest() async throws -> QueueEntry? {
        try await removeUnexpired { try await $0.shiftEntry() }
    }

    private func removeUnexpired(_ remove: (QueueStore) async throws -> QueueStoreEntry?) async throws -> QueueEntry? {
        while let stored = try await remove(store) {
            if runner.isExpired(stored) {
                await reporter.expired(stored)
                continue
            }
            return try queueEntry(stored)
        }
        return nil
    }

    /// Every unexpired entry in replay order, without removing any; expired entries are deleted.
    public func getAll() async throws -> [QueueEntry] {
        let stored = try await store.getAll()
        let expired = stored.filter(runner.isExpired)
        if !expired.isEmpty {
            try await database.deleteEntries(ids: expired.map(\.id))
            for entry in expired { await reporter.expired(entry) }
        }
        return try stored.filter { !runner.isExpired($0) }.map(queueEntry)
    }

    /// The queue's size: the entries waiting for replay, expired ones included (as in Workbox).
    /// Dead letters are not counted (see ``deadLetters()``), nor entries a running replay delivered.
    public func size() async throws -> Int {
        try await store.size()
    }

    /// The first pending entry (the next one replay sends), if any.
    nonisolated func headEntry() async throws -> QueueStoreEntry? {
        try await database.headEntry(queueName: name)
    }

    private func queueEntry(_ stored: QueueStoreEntry) throws -> QueueEntry {
        let request = try StorableRequest(requestData: stored.requestData).toRequest()
        var entry = QueueEntry(request: request, timestamp: stored.timestamp, metadata: stored.metadata)
        entry.id = stored.id
        return entry
    }
}
