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
/// try await queue.pushRequest(QueueEntry(request: request))   // stored, sync registered
/// try await queue.replayRequests()                             // or: a SyncEvent for queue.syncTag
/// ```
///
/// - Durability: ``pushRequest(_:)`` returns once the entry is committed to the database.
/// - Order: entries are replayed first in, first out; ``unshiftRequest(_:)`` puts one before the
///   queue's head without touching other queues.
/// - Replay never deletes an entry before the server answered, and stops at the first entry that
///   cannot be delivered now (it stays at the head). See ``replayRequests()``.
/// - Two live queues with one name on one database are refused; the name is free again once the
///   queue is released.
public actor Queue {
    /// The queue's name.
    public nonisolated let name: String
    /// The sync tag of the queue: `background-sync:<name>`.
    public nonisolated let syncTag: String
    /// The options the queue was created with.
    public nonisolated let options: QueueOptions
    /// The database holding the entries.
    public nonisolated let database: any QueueDatabase
    /// The transport replays go through.
    public nonisolated let transport: any HTTPTransport
    /// The manager that runs the queue's syncs.
    public nonisolated let syncManager: SyncManager

    private nonisolated let store: QueueStore
    private nonisolated let reservation: QueueNameRegistry.Reservation
    private nonisolated let handlerToken = UUID()
    private nonisolated let fallbackSync = Locked<Task<Void, Never>?>(nil)
    private nonisolated let owner = LeaseOwner.current()
    private nonisolated let subscribers = Locked<[UUID: AsyncStream<QueueEvent>.Continuation]>([:])
    private nonisolated let metrics: QueueMetrics
    private nonisolated let logger: Logger
    /// Read and written by `pushRequest` without entering the actor, so that producers never queue
    /// behind a replay (and pay no actor hop on the hot path).
    private nonisolated let syncState = Locked((inProgress: false, requestsAdded: false))
    /// Whether the sync manager keeps its registrations in this queue's database, so that a push
    /// can register the tag in the entry's own transaction (fixed at creation).
    private nonisolated let registersWithEntries: Bool
    /// The entries an ordered replay delivered and has not deleted yet (it deletes them a few at a
    /// time, see ``orderedLeaseAhead``), in order: the sizes this queue reports leave them out.
    private nonisolated let undeletedDeliveries = Locked<[Int64]>([])
    private var runningReplay: Task<ReplaySummary, any Error>?
    /// The status that paused the queue (401/403), until ``resume()``.
    private nonisolated let pausedStatus = Locked<Int?>(nil)
    /// Set by a graceful shutdown: the replay finishes the sends in flight and claims nothing more.
    private nonisolated let stopFlag = Locked(false)
    private nonisolated var stopRequested: Bool { stopFlag.withLock { $0 } }
    private nonisolated let warnedAboutStrippedSecrets = Locked(false)
    private nonisolated let random = Locked(SystemRandomNumberGenerator())

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
    ///   ``BackgroundSyncError/Code/invalidRequest`` for an empty name, or a storage error when the
    ///   default database cannot be opened.
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
        let database = try database ?? SQLiteQueueDatabase.shared()
        self.name = name
        self.syncTag = "background-sync:" + name
        self.options = options
        self.database = database
        self.transport = transport
        self.syncManager = syncManager ?? SyncManager.shared(for: database)
        self.registersWithEntries = self.syncManager.persists(in: database)
        self.store = QueueStore(queueName: name, database: database)
        self.metrics = QueueMetrics(queueName: name, factory: options.metricsFactory)
        self.reservation = try QueueNameRegistry.reserve(name, on: database)
        var logger = options.logger
        logger[metadataKey: "background-sync.queue"] = .string(name)
        self.logger = logger
        try self.syncManager.addHandler(tag: syncTag, token: handlerToken) { [weak self] event in
            guard let self else {
                throw BackgroundSyncError(.unknownSyncTag, "the queue of the sync tag '\(event.tag)' was released")
            }
            try await self.handleSync(event)
        }
        if options.forceSyncFallback {
            let task = Task { [weak self] in
                guard let self else { return }
                await self.runFallbackSync()
            }
            fallbackSync.withLock { $0 = task }
        }
    }

    deinit {
        syncManager.removeHandler(tag: syncTag, token: handlerToken)
        reservation.release()
        subscribers.withLock { $0.values.forEach { $0.finish() } }
    }

    /// A stream of the queue's events (enqueued, replayed with the response, retry scheduled,
    /// dead-lettered, expired, paused, resumed), each with the queue size after it. Each call
    /// returns a new stream; it ends when the queue is released. Up to 1,000 unread events are kept.
    public nonisolated func events() -> AsyncStream<QueueEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: QueueEvent.self, bufferingPolicy: .bufferingNewest(1000))
        let id = UUID()
        subscribers.withLock { $0[id] = continuation }
        continuation.onTermination = { [subscribers] _ in
            _ = subscribers.withLock { $0.removeValue(forKey: id) }
        }
        return stream
    }

    /// Publishes an event to the subscribers and the size gauge. `size` is read from the database
    /// when not given, and only when someone listens; a replay records the gauge once at its end.
    private nonisolated func emit(_ kind: QueueEvent.Kind, entryID: Int64?, size: Int? = nil) async {
        if let size { metrics.size.record(size) }
        let listeners = subscribers.withLock { Array($0.values) }
        guard !listeners.isEmpty else { return }
        let currentSize: Int
        if let size {
            currentSize = size
        } else {
            currentSize = (try? await pendingSize()) ?? 0
        }
        let event = QueueEvent(kind: kind, queueName: name, entryID: entryID, size: currentSize)
        for listener in listeners { listener.yield(event) }
    }

    /// Waits for the sync that ``QueueOptions/forceSyncFallback`` started at creation, if any.
    public func waitForFallbackSync() async {
        await fallbackSync.withLock { $0 }?.value
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
        var requestData = try StorableRequest.fromRequest(entry.request).toObject()
        let idempotencyKey = idempotencyKey(for: &requestData)
        let sealedSecrets = try protectSecrets(&requestData)
        let stored = UnidentifiedQueueStoreEntry(
            requestData: requestData, timestamp: entry.timestamp, metadata: entry.metadata,
            idempotencyKey: idempotencyKey, sealedSecrets: sealedSecrets)
        // Outside a sync, the registration is written with the entry when the manager keeps its
        // registrations in the same database: one transaction, one fsync.
        let registersWithEntry = registersWithEntries && !syncState.withLock { $0.inProgress }
        let inserted = try await database.insertEntry(
            stored, queueName: name, at: end, registeringSyncTag: registersWithEntry ? syncTag : nil)
        logger.debug(
            "request queued",
            metadata: ["background-sync.entry": "\(inserted.id)", "http.method": "\(requestData.method)"])
        metrics.enqueued.increment()
        await emit(.enqueued, entryID: inserted.id, size: inserted.queueSize)
        let duringSync = syncState.withLock { state -> Bool in
            if state.inProgress { state.requestsAdded = true }
            return state.inProgress
        }
        if registersWithEntry {
            syncManager.noteRegistered(syncTag)
        } else if !duringSync {
            await registerSync()
        }
        return inserted.id
    }

    /// The key sent in the `Idempotency-Key` header: the request's own, or a new one for POST and
    /// PATCH when ``QueueOptions/addsIdempotencyKey`` is on.
    private nonisolated func idempotencyKey(for data: inout StorableRequest.RequestData) -> String? {
        if let existing = data.headers["idempotency-key"] { return existing }
        guard options.addsIdempotencyKey, data.method == "POST" || data.method == "PATCH" else { return nil }
        let key = UUID.random().lowercasedString
        data.headers["idempotency-key"] = key
        return key
    }

    /// Applies ``QueueOptions/secretHeaders`` to the request's headers; returns the sealed secrets
    /// to store, if any.
    private nonisolated func protectSecrets(_ data: inout StorableRequest.RequestData) throws -> Data? {
        if case .plain = options.secretHeaders { return nil }
        let (kept, secrets) = SecretSealer.split(data.headers, names: options.secretHeaderNames)
        guard !secrets.isEmpty else { return nil }
        data.headers = kept
        switch options.secretHeaders {
        case .plain:
            return nil
        case .strip:
            let firstTime = warnedAboutStrippedSecrets.withLock { warned -> Bool in
                defer { warned = true }
                return !warned
            }
            if options.requestWillReplay == nil && firstTime {
                logger.warning(
                    "secret headers are not stored and no requestWillReplay hook adds them back: replays go without them",
                    metadata: ["background-sync.headers": "\(secrets.keys.sorted().joined(separator: ","))"])
            }
            return nil
        case .encrypted(let key):
            return try SecretSealer.seal(secrets, key: key)
        }
    }

    // MARK: - Removing and reading

    /// Removes and returns the last entry, skipping (and deleting) expired ones; `nil` when empty.
    public func popRequest() async throws -> QueueEntry? {
        try await removeUnexpired { try await $0.popEntry() }
    }

    /// Removes and returns the first entry, skipping (and deleting) expired ones; `nil` when empty.
    public func shiftRequest() async throws -> QueueEntry? {
        try await removeUnexpired { try await $0.shiftEntry() }
    }

    private func removeUnexpired(_ remove: (QueueStore) async throws -> QueueStoreEntry?) async throws -> QueueEntry? {
        while let stored = try await remove(store) {
            if isExpired(stored, now: options.clock.now) {
                await reportExpired(stored)
                continue
            }
            return try queueEntry(stored)
        }
        return nil
    }

    /// Every unexpired entry in replay order, without removing any; expired entries are deleted.
    public func getAll() async throws -> [QueueEntry] {
        let now = options.clock.now
        let stored = try await store.getAll()
        let expired = stored.filter { isExpired($0, now: now) }
        if !expired.isEmpty {
            try await database.deleteEntries(ids: expired.map(\.id))
            for entry in expired { await reportExpired(entry) }
        }
        return try stored.filter { !isExpired($0, now: now) }.map(queueEntry)
    }

    /// The number of entries waiting for replay, expired ones included (as in Workbox).
    /// Dead letters are not counted; see ``deadLetters()``.
    public func size() async throws -> Int {
        try await pendingSize()
    }

    /// The pending entries in the database, less those delivered and about to be deleted.
    private nonisolated func pendingSize() async throws -> Int {
        let stored = try await store.size()
        return max(stored - undeletedDeliveries.withLock { $0.count }, 0)
    }

    // MARK: - Dead letters

    /// The entries set aside as dead letters, in queue order, with their last status and error.
    public func deadLetters() async throws -> [QueueStoreEntry] {
        try await store.getDeadLetters()
    }

    /// Puts a dead letter back in the queue, at its old position with its attempts reset, and
    /// registers a sync. Throws ``BackgroundSyncError/Code/entryNotFound`` if this queue has no
    /// dead letter with that id.
    public func requeueDeadLetter(id: Int64) async throws {
        guard try await database.requeueDeadEntries(queueName: name, ids: [id]) == 1 else {
            throw BackgroundSyncError(.entryNotFound, "no dead letter with id \(id)", queueName: name, entryID: id)
        }
        await registerSync()
    }

    /// Puts every dead letter back in the queue and registers a sync; returns how many.
    @discardableResult
    public func requeueAllDeadLetters() async throws -> Int {
        let count = try await database.requeueDeadEntries(queueName: name, ids: nil)
        if count > 0 { await registerSync() }
        return count
    }

    /// Deletes a dead letter. Throws ``BackgroundSyncError/Code/entryNotFound`` if this queue has
    /// no dead letter with that id.
    public func deleteDeadLetter(id: Int64) async throws {
        guard let entry = try await database.entry(id: id), entry.queueName == name, entry.state == .dead,
            try await database.deleteEntry(id: id)
        else {
            throw BackgroundSyncError(.entryNotFound, "no dead letter with id \(id)", queueName: name, entryID: id)
        }
    }

    /// Deletes every dead letter; returns how many.
    @discardableResult
    public func deleteAllDeadLetters() async throws -> Int {
        try await database.deleteEntries(queueName: name, state: .dead)
    }

    nonisolated private func isExpired(_ entry: QueueStoreEntry, now: Date) -> Bool {
        now.timeIntervalSince(entry.timestamp) > options.maxRetentionTime.timeInterval
    }

    nonisolated(nonsending) private func reportExpired(_ entry: QueueStoreEntry) async {
        metrics.expired.increment()
        await emit(.expired, entryID: entry.id)
        logger.info(
            "expired request removed: older than the queue's maxRetentionTime",
            metadata: [
                "background-sync.entry": "\(entry.id)",
                "background-sync.queued-at": "\(entry.timestamp)",
                "http.method": "\(entry.requestData.method)",
                "url.full": "\(entry.requestData.url)",
            ])
    }

    private func queueEntry(_ stored: QueueStoreEntry) throws -> QueueEntry {
        let request = try StorableRequest(requestData: stored.requestData).toRequest()
        var entry = QueueEntry(request: request, timestamp: stored.timestamp, metadata: stored.metadata)
        entry.id = stored.id
        return entry
    }

    // MARK: - Sync

    /// Registers the queue's sync tag. Never throws: a registration that cannot be written is
    /// logged (the entries themselves are already stored, and the next sync replays them).
    public nonisolated func registerSync() async {
        do {
            try await syncManager.register(syncTag)
        } catch {
            logger.info("sync registration failed", metadata: ["error": "\(error)"])
        }
    }

    private func runFallbackSync() async {
        do {
            try await handleSync(SyncEvent(tag: syncTag))
        } catch {
            logger.info("start-up sync failed; entries stay queued", metadata: ["error": "\(error)"])
        }
    }

    /// Runs `onSync` for an event of the queue's tag, then registers again if entries were added
    /// meanwhile and the sync succeeded, or failed on its last chance (Workbox's rules).
    func handleSync(_ event: SyncEvent) async throws {
        syncState.withLock { $0 = (inProgress: true, requestsAdded: false) }
        // Ends the sync and tells whether entries were added during it, atomically: a push after
        // this point registers the tag itself.
        let finish = { [syncState] () -> Bool in
            syncState.withLock { state in
                state.inProgress = false
                return state.requestsAdded
            }
        }
        do {
            if let onSync = options.onSync {
                try await onSync(self)
            } else {
                try await replayRequests()
            }
        } catch {
            if finish() && event.lastChance {
                await registerSync()
            }
            throw error
        }
        if finish() {
            await registerSync()
        }
    }

    // MARK: - Pause

    /// Whether replay is paused because the server asked for credentials (401/403).
    public var isPaused: Bool { pausedStatus.withLock { $0 } != nil }

    /// Resumes a queue paused by a 401/403 (once the app has fresh credentials, which
    /// ``QueueOptions/requestWillReplay`` adds) and registers a sync.
    public func resume() async {
        guard pausedStatus.withLock({ $0 }) != nil else { return }
        pausedStatus.withLock { $0 = nil }
        logger.info("replay resumed")
        await emit(.resumed, entryID: nil)
        await registerSync()
    }

    /// The replay state of the head entry, for schedulers (``SyncService``).
    nonisolated func headState() async throws -> HeadState? {
        try await database.headState(queueName: name)
    }

    /// Asks a running replay to finish the sends in flight and claim nothing more (graceful shutdown).
    nonisolated func requestStop() {
        stopFlag.withLock { $0 = true }
    }

    /// Whether a stop was requested and the replay has not restarted since (for tests).
    nonisolated var stopIsRequested: Bool { stopFlag.withLock { $0 } }

    // MARK: - Replay

    /// Sends the queue's entries in order and deletes each one once the server accepted it.
    ///
    /// For each entry, from the head: the entry is leased (so no other replayer sends it too), passed
    /// to ``QueueOptions/requestWillReplay``, sent, then classified by ``QueueOptions/classifier``:
    /// - delivered (default: 1xx–3xx): deleted, ``QueueOptions/requestDidReplay`` gets the response;
    /// - dead letter (default: 4xx but 401/403/408/425/429, 501, 505): set aside with the status and
    ///   a body excerpt, and replay goes on;
    /// - retry (no response, 408, 425, 429, 5xx): the entry stays at the head with one more attempt
    ///   counted and its next attempt due after ``QueueOptions/retryPolicy``'s backoff (at least the
    ///   server's `Retry-After`); replay stops and ``BackgroundSyncError/Code/queueReplayFailed`` is
    ///   thrown with the cause. An entry out of attempts (``RetryPolicy/maxAttempts``) becomes a
    ///   dead letter instead, and replay goes on;
    /// - credentials needed (401, 403): ``QueueOptions/onAuthenticationRequired`` may provide them
    ///   and the entry is sent again; otherwise the queue pauses and
    ///   ``BackgroundSyncError/Code/queuePaused`` is thrown.
    ///
    /// A manual replay sends the head even if it is in backoff. Expired entries are deleted and
    /// reported instead of sent. A call made while a replay of this queue runs waits for that
    /// replay and returns its summary. With ``QueueOptions/maxConcurrentReplays`` above 1, up to that
    /// many entries are in flight, entries in backoff are skipped, and a failure stops new claims.
    @discardableResult
    public func replayRequests() async throws -> ReplaySummary {
        if let status = pausedStatus.withLock({ $0 }) {
            throw pausedError(status: status)
        }
        if let runningReplay {
            return try await runningReplay.value
        }
        stopFlag.withLock { $0 = false }
        let task = Task { try await self.drain() }
        runningReplay = task
        defer { runningReplay = nil }
        return try await task.value
    }

    nonisolated private func pausedError(status: Int) -> BackgroundSyncError {
        BackgroundSyncError(
            .queuePaused, "replay is paused: the server answered \(status) and wants credentials; call resume()",
            queueName: name, status: status)
    }

    /// What became of one claimed entry.
    private enum Outcome {
        /// The server accepted it; the caller deletes the entry (with the next claim, in order).
        case delivered(ReplayResponse)
        case deadLettered
        case expired
        /// Must be retried (or the queue paused): replay stops with this error.
        case stop(BackgroundSyncError)
    }

    // The replay runs off the actor, on the global executor, like the transport and the database
    // calls it makes: each of them would otherwise be two executor hops (and thread wake-ups) per entry.
    private nonisolated func drain() async throws -> ReplaySummary {
        var summary = ReplaySummary()
        let result: Result<Void, any Error>
        do {
            if options.maxConcurrentReplays > 1 {
                try await drainConcurrently(&summary)
            } else {
                try await drainInOrder(&summary)
            }
            result = .success(())
        } catch {
            result = .failure(error)
        }
        // A replay that failed may leave deliveries undeleted: they are pending again (sent again).
        undeletedDeliveries.withLock { $0.removeAll() }
        if summary != ReplaySummary() {
            if let size = try? await store.size() { metrics.size.record(size) }
            logger.debug(
                "replay finished",
                metadata: [
                    "background-sync.delivered": "\(summary.delivered)",
                    "background-sync.dead-lettered": "\(summary.deadLettered)",
                    "background-sync.expired": "\(summary.expired)",
                ])
        }
        try result.get()
        return summary
    }

    private nonisolated func tally(_ outcome: Outcome, into summary: inout ReplaySummary) {
        switch outcome {
        case .delivered: summary.delivered += 1
        case .deadLettered: summary.deadLettered += 1
        case .expired: summary.expired += 1
        case .stop: break
        }
    }

    /// How many entries an ordered replay leases at a time. It sends them one by one, in order,
    /// and while it sends the last of them, deletes the delivered ones and leases the next, in one
    /// commit: a few commits per hundred entries instead of one per entry, none of them waited for.
    /// The price: a process that dies mid-replay may send again up to this many delivered entries
    /// (each with its `Idempotency-Key`).
    static let orderedLeaseAhead = 8

    /// One entry at a time, in order, from entries leased ``orderedLeaseAhead`` at a time; the
    /// bookkeeping commits while a request is in flight. A delivered entry's hook
    /// (``QueueOptions/requestDidReplay``) still runs before the next entry is prepared, so it can
    /// change what the next request carries.
    private nonisolated func drainInOrder(_ summary: inout ReplaySummary) async throws {
        var claim = try await claimHead(current: nil)
        // Leased and not sent yet, in order; `next` is the one to send.
        var leased = claim.entries
        var next = 0
        var leasedAt = options.clock.now
        while next < leased.count {
            // Leases age while the entries before them are sent: past half their duration, the rest
            // go back and are leased again, so that none is sent on an expired lease.
            if next > 0, options.clock.now.timeIntervalSince(leasedAt) > options.leaseDuration.timeInterval / 2 {
                try await abandon(leased[next...])
                claim = try await claimHead(current: nil)
                (leased, next, leasedAt) = (claim.entries, 0, options.clock.now)
                if leased.isEmpty { break }
            }
            let entry = leased[next]
            next += 1
            let outcome: Outcome
            let following: HeadClaim?
            do {
                (outcome, following) = try await send(entry, refill: next == leased.count)
            } catch {
                // The database failed: try to delete what was delivered and give back what is
                // leased ahead (both, if the database allows; otherwise the leases expire and the
                // delivered entries are sent again).
                try? await deleteDelivered()
                try? await abandon(leased[next...])
                throw error
            }
            if let following { claim = following }
            if case .stop(let error) = outcome {
                try await abandon(leased[next...] + (following?.entries ?? []))
                try await deleteDelivered()
                throw error
            }
            tally(outcome, into: &summary)
            if case .delivered(let response) = outcome {
                // Counted out of the sizes reported from now on (the event's among them).
                undeletedDeliveries.withLock { $0.append(entry.id) }
                await self.delivered(entry, response)
            }
            if let following {
                (leased, next, leasedAt) = (following.entries, 0, options.clock.now)
            }
            if stopRequested || Task.isCancelled {
                // Finish here: give back the entries leased ahead, delete the delivered ones.
                try await abandon(leased[next...])
                try await deleteDelivered()
                try Task.checkCancellation()
                return
            }
        }
        try await deleteDelivered()
        if let busy = claim.busy {
            throw BackgroundSyncError(
                .queueReplayFailed,
                "the head entry is being replayed by \(busy.owner) (lease until \(busy.until))", queueName: name)
        }
    }

    /// Deletes the entries delivered so far and leases the next ones at the head, other than
    /// `current` (see ``orderedLeaseAhead``), in one commit.
    nonisolated(nonsending) private func claimHead(current: Int64?) async throws -> HeadClaim {
        let delivered = undeletedDeliveries.withLock { $0 }
        let claim = try await database.completeClaimsAndClaimHead(
            completing: delivered, current: current, owner: owner, queueName: name, limit: Self.orderedLeaseAhead,
            leaseDuration: options.leaseDuration, now: options.clock.now)
        undeletedDeliveries.withLock { $0.removeFirst(min(delivered.count, $0.count)) }
        return claim
    }

    /// Sends `entry` and records its outcome; with `refill`, meanwhile deletes the entries delivered
    /// before it and leases the next ones, and returns that claim too.
    nonisolated(nonsending) private func send(_ entry: QueueStoreEntry, refill: Bool) async throws -> (Outcome, HeadClaim?) {
        guard refill else { return (try await process(entry), nil) }
        async let following = claimHead(current: entry.id)
        let outcome: Outcome
        do {
            outcome = try await process(entry)
        } catch {
            // The database failed to record the outcome: give back the entries leased meanwhile too.
            if let leased = try? await following {
                try? await abandon(leased.entries[...])
            }
            throw error
        }
        return (outcome, try await following)
    }

    /// Gives back entries leased ahead that will not be sent now, in one commit.
    nonisolated(nonsending) private func abandon(_ entries: ArraySlice<QueueStoreEntry>) async throws {
        try await database.abandonClaims(ids: entries.map(\.id), owner: owner)
    }

    /// Deletes the entries an ordered replay delivered that no next lease will.
    nonisolated(nonsending) private func deleteDelivered() async throws {
        let delivered = undeletedDeliveries.withLock { $0 }
        guard !delivered.isEmpty else { return }
        // As a claim deletes them: replay bookkeeping (see `SQLiteQueueDatabase.SynchronousModes`).
        _ = try await database.completeClaimsAndClaimEntries(
            ids: delivered, owner: owner, queueName: name, limit: 0, leaseDuration: options.leaseDuration,
            now: options.clock.now)
        undeletedDeliveries.withLock { $0.removeFirst(min(delivered.count, $0.count)) }
    }

    /// What follows a delivery: metrics, event, the app's hook. The concurrent replay calls it once
    /// the entry is deleted; the ordered one before (its deletion commits with the next leases), so
    /// if the process dies in between, the entry is sent again and the hook runs again.
    nonisolated(nonsending) private func delivered(
        _ entry: QueueStoreEntry, _ response: ReplayResponse
    ) async {
        metrics.replayed.increment()
        logger.debug("request replayed", metadata: ["background-sync.entry": "\(entry.id)", "http.status": "\(response.status)"])
        await emit(.replayed(response), entryID: entry.id)
        await options.requestDidReplay?(entry, response)
    }

    /// What a task of the concurrent replay did.
    private enum ConcurrentStep {
        /// An entry was sent and its outcome recorded (a delivery is deleted by a later claim).
        case processed(QueueStoreEntry, Outcome)
        /// Delivered entries were deleted (and reported) and up to `requested` entries leased, in one commit.
        case claimed([QueueStoreEntry], requested: Int)
    }

    /// Up to ``QueueOptions/maxConcurrentReplays`` entries in flight, independent of each other.
    /// Entries are leased ahead, a batch at a time, by a task that runs while the others are sent
    /// (and deletes the delivered ones in the same commit), so a finished send is replaced at once.
    private nonisolated func drainConcurrently(_ summary: inout ReplaySummary) async throws {
        let limit = options.maxConcurrentReplays
        let (outcomes, failure) = try await withThrowingTaskGroup(of: ConcurrentStep.self) {
            group -> ([Outcome], BackgroundSyncError?) in
            var outcomes: [Outcome] = []
            var failure: BackgroundSyncError?
            var inFlight = 0
            // Leased and not sent yet, in queue order.
            var ready: [QueueStoreEntry] = []
            var claiming = false
            // The last claim got fewer entries than it asked for, and how many it got.
            var (drained, lastClaimed) = (false, 0)
            // Delivered entries are deleted with the next batch of claims: one commit for both.
            var toDelete: [(QueueStoreEntry, ReplayResponse)] = []
            do {
                while true {
                    if failure == nil, !stopRequested, !Task.isCancelled {
                        while inFlight < limit, !ready.isEmpty {
                            let entry = ready.removeFirst()
                            inFlight += 1
                            group.addTask { .processed(entry, try await self.process(entry)) }
                        }
                        // Keep a batch leased ahead; once the queue ran dry, look again only when
                        // everything finished and the last look found something.
                        let wanted = 2 * limit - inFlight - ready.count
                        let idle = inFlight == 0 && ready.isEmpty
                        if !claiming, wanted >= max(limit / 2, 1), !drained || (idle && lastClaimed > 0) {
                            claiming = true
                            let deleting = toDelete
                            toDelete.removeAll()
                            group.addTask {
                                .claimed(try await self.completeDeliveries(deleting, thenClaim: wanted), requested: wanted)
                            }
                        }
                    }
                    guard let step = try await group.next() else { break }
                    switch step {
                    case .processed(let entry, let outcome):
                        inFlight -= 1
                        switch outcome {
                        case .delivered(let response): toDelete.append((entry, response))
                        case .stop(let error) where failure == nil: failure = error
                        default: break
                        }
                        outcomes.append(outcome)
                    case .claimed(let entries, let requested):
                        claiming = false
                        ready += entries
                        (drained, lastClaimed) = (entries.count < requested, entries.count)
                    }
                }
            } catch {
                // A database failure: what was delivered is still deleted if the database allows.
                _ = try? await completeDeliveries(toDelete, thenClaim: 0)
                try? await abandon(ready[...])
                throw error
            }
            // Deletions first (a delivered entry left behind would be sent again), then the entries
            // leased ahead of a stop go back untouched.
            _ = try await completeDeliveries(toDelete, thenClaim: 0)
            try await abandon(ready[...])
            return (outcomes, failure)
        }
        for outcome in outcomes { tally(outcome, into: &summary) }
        if let failure { throw failure }
        try Task.checkCancellation()
    }

    /// Deletes the delivered entries and claims up to `limit` more in one commit, then reports the
    /// deliveries (metrics, events, the app's hook).
    private nonisolated func completeDeliveries(
        _ deliveries: [(QueueStoreEntry, ReplayResponse)], thenClaim limit: Int
    ) async throws -> [QueueStoreEntry] {
        if deliveries.isEmpty && limit == 0 { return [] }
        let claimed = try await database.completeClaimsAndClaimEntries(
            ids: deliveries.map(\.0.id), owner: owner, queueName: name, limit: limit,
            leaseDuration: options.leaseDuration, now: options.clock.now)
        for (entry, response) in deliveries { await delivered(entry, response) }
        return claimed
    }

    /// Sends one claimed entry and records the outcome in the database, except a delivery, which
    /// the caller records (so that, in order, it shares a commit with the next claim). Throws only
    /// when the database fails (the entry then keeps its lease until it expires; nothing is lost).
    nonisolated(nonsending) private func process(_ entry: QueueStoreEntry, credentialsRefreshed: Bool = false) async throws -> Outcome {
        if isExpired(entry, now: options.clock.now) {
            try await database.completeClaim(id: entry.id, owner: owner)
            await reportExpired(entry)
            return .expired
        }
        var request: URLRequest
        do {
            request = try StorableRequest(requestData: entry.requestData).toRequest()
            if let sealed = entry.sealedSecrets {
                guard case .encrypted(let key) = options.secretHeaders else {
                    throw BackgroundSyncError(
                        .invalidRequest, "the entry has encrypted secret headers but the queue has no key")
                }
                for (field, value) in try SecretSealer.open(sealed, key: key) {
                    request.setValue(value, forHTTPHeaderField: field)
                }
            }
        } catch {
            return try await deadLetter(entry, ReplayFailure(error: "cannot rebuild the request: \(error)"))
        }
        // Described only when something went wrong: this runs for every replayed entry.
        var target: String { "entry \(entry.id) (\(entry.requestData.method) \(entry.requestData.url))" }
        if let hook = options.requestWillReplay {
            do {
                request = try await hook(request, entry)
            } catch {
                return try await retry(
                    entry, ReplayFailure(error: "requestWillReplay failed: " + describeError(error)), retryAfter: nil,
                    message: "requestWillReplay failed for \(target)", underlying: error)
            }
        }
        let body: Data
        let http: HTTPURLResponse
        do {
            (body, http) = try await transport.send(request)
        } catch {
            return try await retry(
                entry, ReplayFailure(error: describeError(error)), retryAfter: nil,
                message: "replay of \(target) got no response", underlying: error)
        }
        var headers: [String: String] = [:]
        for (field, value) in http.allHeaderFields {
            if let field = field as? String, let value = value as? String { headers[field.lowercased()] = value }
        }
        let response = ReplayResponse(status: http.statusCode, headers: headers, body: body)
        var failure: ReplayFailure {
            ReplayFailure(
                status: response.status, error: "HTTP \(response.status)",
                responseExcerpt: body.isEmpty ? nil : Data(body.prefix(1024)))
        }
        switch options.classifier(response) {
        case .delivered:
            return .delivered(response)
        case .deadLetter:
            return try await deadLetter(entry, failure)
        case .retry:
            let retryAfter = headers["retry-after"].flatMap { RetryPolicy.parseRetryAfter($0, now: options.clock.now) }
            return try await retry(
                entry, failure, retryAfter: retryAfter, message: "replay of \(target) got HTTP \(response.status)",
                underlying: nil)
        case .pauseForAuthentication:
            if !credentialsRefreshed, let hook = options.onAuthenticationRequired, await hook(entry, response) {
                return try await process(entry, credentialsRefreshed: true)
            }
            try await database.releaseClaim(id: entry.id, owner: owner, failure: failure, nextAttemptAt: nil)
            pausedStatus.withLock { $0 = response.status }
            logger.info(
                "replay paused: the server wants credentials",
                metadata: ["background-sync.entry": "\(entry.id)", "http.status": "\(response.status)"])
            await emit(.paused(status: response.status), entryID: entry.id)
            var error = pausedError(status: response.status)
            error.entryID = entry.id
            return .stop(error)
        }
    }

    /// Gives the entry back for a later attempt (or dead-letters it when it is out of attempts).
    nonisolated(nonsending) private func retry(
        _ entry: QueueStoreEntry, _ failure: ReplayFailure, retryAfter: Duration?, message: String,
        underlying: (any Error)?
    ) async throws -> Outcome {
        let attempts = entry.attempts + 1
        guard options.retryPolicy.allowsAnotherAttempt(afterAttempts: attempts) else {
            var final = failure
            final.error = "gave up after \(attempts) attempts: \(failure.error)"
            return try await deadLetter(entry, final)
        }
        let delay = random.withLock {
            options.retryPolicy.delay(afterAttempts: attempts, retryAfter: retryAfter, using: &$0)
        }
        let next = options.clock.now.addingTimeInterval(delay.timeInterval)
        try await database.releaseClaim(id: entry.id, owner: owner, failure: failure, nextAttemptAt: next)
        metrics.retried.increment()
        logger.debug(
            "replay failed; retry scheduled",
            metadata: ["background-sync.entry": "\(entry.id)", "background-sync.delay": "\(delay)", "error": "\(failure.error)"])
        await emit(
            .retryScheduled(delay: delay, attempts: attempts, status: failure.status, error: failure.error),
            entryID: entry.id)
        return .stop(
            BackgroundSyncError(
                .queueReplayFailed, "\(message); it stays queued (attempt \(attempts), next in \(delay))",
                queueName: name, entryID: entry.id, status: failure.status, underlying: underlying))
    }

    nonisolated(nonsending) private func deadLetter(_ entry: QueueStoreEntry, _ failure: ReplayFailure) async throws -> Outcome {
        try await database.deadLetterClaim(id: entry.id, owner: owner, failure: failure)
        metrics.deadLettered.increment()
        logger.info(
            "request set aside as a dead letter",
            metadata: ["background-sync.entry": "\(entry.id)", "reason": "\(failure.error)"])
        await emit(.deadLettered(status: failure.status, reason: failure.error), entryID: entry.id)
        if let hook = options.onDeadLetter {
            var dead = entry
            dead.state = .dead
            dead.attempts += 1
            dead.lastStatus = failure.status
            dead.lastError = failure.error
            dead.lastResponseExcerpt = failure.responseExcerpt
            dead.nextAttemptAt = nil
            await hook(dead)
        }
        return .deadLettered
    }
}
