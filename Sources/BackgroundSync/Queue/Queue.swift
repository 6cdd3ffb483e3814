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
    private var logger: Logger
    private var syncInProgress = false
    private var requestsAddedDuringSync = false
    private var runningReplay: Task<ReplaySummary, any Error>?

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
        self.store = QueueStore(queueName: name, database: database)
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
    public func pushRequest(_ entry: QueueEntry) async throws -> Int64 {
        try await add(entry, at: .tail)
    }

    /// Stores a request with the current time and `metadata` at the end of the queue.
    @discardableResult
    public func pushRequest(_ request: URLRequest, metadata: [String: String]? = nil) async throws -> Int64 {
        try await add(QueueEntry(request: request, metadata: metadata), at: .tail)
    }

    /// Stores a request at the head of the queue (before every entry of this queue only) and
    /// registers a sync. Returns its id.
    @discardableResult
    public func unshiftRequest(_ entry: QueueEntry) async throws -> Int64 {
        try await add(entry, at: .head)
    }

    private func add(_ entry: QueueEntry, at end: QueueEnd) async throws -> Int64 {
        var requestData = try StorableRequest.fromRequest(entry.request).toObject()
        let idempotencyKey = idempotencyKey(for: &requestData)
        let stored = UnidentifiedQueueStoreEntry(
            requestData: requestData, timestamp: entry.timestamp, metadata: entry.metadata,
            idempotencyKey: idempotencyKey)
        let id = try await database.insertEntry(stored, queueName: name, at: end)
        logger.debug(
            "request queued",
            metadata: ["background-sync.entry": "\(id)", "http.method": "\(requestData.method)"])
        if syncInProgress {
            requestsAddedDuringSync = true
        } else {
            await registerSync()
        }
        return id
    }

    /// The key sent in the `Idempotency-Key` header: the request's own, or a new one for POST and
    /// PATCH when ``QueueOptions/addsIdempotencyKey`` is on.
    private func idempotencyKey(for data: inout StorableRequest.RequestData) -> String? {
        if let existing = data.headers["idempotency-key"] { return existing }
        guard options.addsIdempotencyKey, data.method == "POST" || data.method == "PATCH" else { return nil }
        let key = UUID().uuidString.lowercased()
        data.headers["idempotency-key"] = key
        return key
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
            if isExpired(stored, now: Date()) {
                reportExpired(stored)
                continue
            }
            return try queueEntry(stored)
        }
        return nil
    }

    /// Every unexpired entry in replay order, without removing any; expired entries are deleted.
    public func getAll() async throws -> [QueueEntry] {
        let now = Date()
        let stored = try await store.getAll()
        let expired = stored.filter { isExpired($0, now: now) }
        if !expired.isEmpty {
            try await database.deleteEntries(ids: expired.map(\.id))
            expired.forEach(reportExpired)
        }
        return try stored.filter { !isExpired($0, now: now) }.map(queueEntry)
    }

    /// The number of entries waiting for replay, expired ones included (as in Workbox).
    /// Dead letters are not counted; see ``deadLetters()``.
    public func size() async throws -> Int {
        try await store.size()
    }

    /// The entries set aside as dead letters, in queue order, with their last status and error.
    public func deadLetters() async throws -> [QueueStoreEntry] {
        try await store.getDeadLetters()
    }

    private func isExpired(_ entry: QueueStoreEntry, now: Date) -> Bool {
        now.timeIntervalSince(entry.timestamp) > options.maxRetentionTime.timeInterval
    }

    private func reportExpired(_ entry: QueueStoreEntry) {
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
    public func registerSync() async {
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
        syncInProgress = true
        requestsAddedDuringSync = false
        defer { syncInProgress = false }
        do {
            if let onSync = options.onSync {
                try await onSync(self)
            } else {
                try await replayRequests()
            }
        } catch {
            if requestsAddedDuringSync && event.lastChance {
                await registerSync()
            }
            throw error
        }
        if requestsAddedDuringSync {
            await registerSync()
        }
    }

    // MARK: - Replay

    /// Sends the queue's entries in order and deletes each one once the server accepted it.
    ///
    /// For each entry, from the head: the entry is leased (so no other replayer sends it too), sent,
    /// then — by ``ReplayDecision/forStatus(_:)`` —
    /// - delivered (1xx–3xx): deleted;
    /// - dead letter (4xx but 401/403/408/425/429, 501, 505): set aside with the status and a body
    ///   excerpt, and replay goes on;
    /// - retry (no response, 408, 425, 429, 5xx) or credentials needed (401, 403): the entry stays at
    ///   the head with one more attempt counted, replay stops, and
    ///   ``BackgroundSyncError/Code/queueReplayFailed`` is thrown with the cause.
    ///
    /// Expired entries are deleted and reported instead of sent. A call made while a replay of this
    /// queue runs waits for that replay and returns its summary.
    @discardableResult
    public func replayRequests() async throws -> ReplaySummary {
        if let runningReplay {
            return try await runningReplay.value
        }
        let task = Task { try await self.drain() }
        runningReplay = task
        defer { runningReplay = nil }
        return try await task.value
    }

    private func drain() async throws -> ReplaySummary {
        var summary = ReplaySummary()
        while true {
            try Task.checkCancellation()
            let claim = try await database.claimHead(
                queueName: name, owner: owner, leaseDuration: options.leaseDuration, now: Date())
            let entry: QueueStoreEntry
            switch claim {
            case .empty:
                if summary != ReplaySummary() {
                    logger.debug(
                        "replay finished",
                        metadata: [
                            "background-sync.delivered": "\(summary.delivered)",
                            "background-sync.dead-lettered": "\(summary.deadLettered)",
                            "background-sync.expired": "\(summary.expired)",
                        ])
                }
                return summary
            case .busy(let holder, let until):
                throw BackgroundSyncError(
                    .queueReplayFailed,
                    "the head entry is being replayed by \(holder) (lease until \(until))", queueName: name)
            case .claimed(let claimed):
                entry = claimed
            }
            if isExpired(entry, now: Date()) {
                try await database.completeClaim(id: entry.id, owner: owner)
                reportExpired(entry)
                summary.expired += 1
                continue
            }
            if try await replay(entry) {
                summary.delivered += 1
            } else {
                summary.deadLettered += 1
            }
        }
    }

    /// Sends one claimed entry; returns `true` when delivered, `false` when dead-lettered, and
    /// throws `queueReplayFailed` when the entry must be retried.
    private func replay(_ entry: QueueStoreEntry) async throws -> Bool {
        let request: URLRequest
        do {
            request = try StorableRequest(requestData: entry.requestData).toRequest()
        } catch {
            try await database.deadLetterClaim(
                id: entry.id, owner: owner, failure: ReplayFailure(error: "cannot rebuild the request: \(error)"))
            logger.info("stored request cannot be rebuilt; dead-lettered", metadata: ["background-sync.entry": "\(entry.id)"])
            return false
        }
        let describe = "entry \(entry.id) (\(entry.requestData.method) \(entry.requestData.url))"
        let body: Data
        let response: HTTPURLResponse
        do {
            (body, response) = try await transport.send(request)
        } catch {
            try await database.releaseClaim(
                id: entry.id, owner: owner, failure: ReplayFailure(error: "\(error)"), nextAttemptAt: nil)
            throw BackgroundSyncError(
                .queueReplayFailed, "replay of \(describe) got no response; it stays at the head of the queue",
                queueName: name, entryID: entry.id, underlying: error)
        }
        let status = response.statusCode
        let failure = ReplayFailure(
            status: status, error: "HTTP \(status)", responseExcerpt: body.isEmpty ? nil : Data(body.prefix(1024)))
        switch ReplayDecision.forStatus(status) {
        case .delivered:
            try await database.completeClaim(id: entry.id, owner: owner)
            logger.debug("request replayed", metadata: ["background-sync.entry": "\(entry.id)", "http.status": "\(status)"])
            return true
        case .deadLetter:
            try await database.deadLetterClaim(id: entry.id, owner: owner, failure: failure)
            logger.info(
                "request refused by the server; kept as a dead letter",
                metadata: ["background-sync.entry": "\(entry.id)", "http.status": "\(status)"])
            return false
        case .retry, .pauseForAuthentication:
            try await database.releaseClaim(id: entry.id, owner: owner, failure: failure, nextAttemptAt: nil)
            let reason = status == 401 || status == 403 ? "needs new credentials" : "must be retried"
            throw BackgroundSyncError(
                .queueReplayFailed, "replay of \(describe) got HTTP \(status) and \(reason); it stays at the head of the queue",
                queueName: name, entryID: entry.id, status: status)
        }
    }
}
