import Foundation

/// The storage driver behind queues: one database holds the entries of many queues and their sync
/// registrations. ``SQLiteQueueDatabase`` is the embedded one; a driver for another store
/// implements this protocol and ``ReplayClaims``, and proves itself with the store conformance
/// suite of the `BackgroundSyncTesting` product (`StoreConformance`).
///
/// ## Entries and order
/// An entry belongs to one queue and is *pending* (waiting for replay) or *dead* (a dead letter:
/// set aside, kept until requeued or deleted). Entries are ordered per queue: ``pushEntry(_:queueName:at:registeringSyncTag:)``
/// at ``QueueEnd/tail`` goes after the queue's last entry, at ``QueueEnd/head`` before its first,
/// whatever other queues hold. A dead letter keeps its position, so a requeued entry goes back
/// where it was.
///
/// ## Replay
/// Nothing is deleted before the server answered: a replay takes entries through
/// ``claims(queueName:order:owner:leaseDuration:clock:)`` (leased to one owner until the lease
/// expires), sends them, and records each outcome on the claims (delivered, failed, dead letter).
/// A lease whose holder died expires, and another replayer may take the entry then; see
/// ``LeaseOwner`` for holders that died on this host.
///
/// ## Durability, stated per operation
/// - **Durable**: once the call returns, the change survives a crash of the process and a power
///   cut. Pushes, removals (``removeEntry(queueName:at:)``), dead-lettering and every
///   administrative change (requeue, set aside, delete, purge, sync registrations).
/// - **Crash-safe**: once the call returns, the change survives a crash of the process; a power
///   cut may roll it back. Replay bookkeeping: leases, failed attempts, setting aside a row that
///   cannot be read, and deleting delivered entries (see ``ReplayClaims``). Rolling one back makes
///   a delivered entry be sent again (with its `Idempotency-Key`), or a damaged row be set aside
///   again; it never loses one.
///
/// ## Concurrency
/// Every method is atomic and safe to call from several tasks, and from several processes or hosts
/// sharing the store. Writes complete even when the calling task is cancelled (a replay gives its
/// leases back from a cancelled task); reads may throw `CancellationError` instead.
///
/// Errors are ``BackgroundSyncError``s: ``BackgroundSyncError/Code/storage`` for the store's own
/// failures (I/O, full, locked, unreadable), with a message that says which.
public protocol QueueDatabase: Sendable {
    /// A string that identifies the store (the canonical file path for a SQLite file), so that two
    /// live queues with one name on one store can be refused.
    var identity: String { get }

    // MARK: Adding and removing

    /// Stores a new pending entry at the head or the tail of a queue and, when `syncTag` is given,
    /// registers that sync tag in the same transaction, so that no entry is ever stored without its
    /// registration. The entry starts with the attempts, next attempt and failure it is given.
    /// Durable. Returns the entry's id and the queue's size after the push (as
    /// ``countEntries(queueName:state:)`` counts it).
    func pushEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, at end: QueueEnd, registeringSyncTag syncTag: String?
    ) async throws -> PushedEntry

    /// Stores `entry` as the current version of its ``UnidentifiedQueueStoreEntry/recordKey`` in a
    /// queue (an ``Outbox`` saving a record), registering `syncTag` in the same transaction when
    /// given. When the queue's last entry with that key is not held by a replay (pending or a dead
    /// letter), it is replaced in place: its content (request, timestamp, metadata, keys, secrets)
    /// becomes `entry`'s, it keeps its position, and it is pending again with `entry`'s attempts,
    /// next attempt and failure (none for a new version). Otherwise `entry` goes at the tail as a
    /// new entry, so that the new version is sent after the old one. Held by a replay means: under
    /// a live lease (a replay may be sending the old content now, or have leased it ahead), or
    /// delivered by a replay whose deletion of it is not committed yet (see
    /// ``ReplayClaims/complete(_:)``) — replacing that one would let the pending deletion take the
    /// new version with it. Durable. Returns the entry's id and the queue's size.
    /// Throws ``BackgroundSyncError/Code/invalidRequest`` when `entry` has no record key.
    func saveEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, registeringSyncTag syncTag: String?
    ) async throws -> PushedEntry

    /// Deletes every entry of a queue with this record key, in any state. Durable. Returns how
    /// many existed. A replay already sending one of them completes that send.
    func deleteEntries(queueName: String, recordKey: String) async throws -> Int

    /// Removes and returns the first or last pending entry of a queue that no live lease holds, or
    /// `nil` when there is none (Workbox's `shiftRequest`/`popRequest`). Durable. A driver that
    /// leases entries ahead of a replay may hold those too; it never returns one handed out.
    func removeEntry(queueName: String, at end: QueueEnd) async throws -> QueueStoreEntry?

    // MARK: Reading

    /// Up to `limit` entries of a queue in a state, in queue order, those whose
    /// ``QueueStoreEntry/position`` is above `afterPosition` (from the first when `nil`): pages of
    /// a large queue cost the size of the page, not of the queue, and an entry deleted meanwhile
    /// does not end the paging. `limit` `nil` returns them all. Entries delivered and not yet
    /// deleted (see ``ReplayClaims/complete(_:)``) are left out.
    func entries(
        queueName: String, state: EntryState, afterPosition: Int64?, limit: Int?
    ) async throws -> [QueueStoreEntry]

    /// The entry with this id, in any queue and state.
    func entry(id: Int64) async throws -> QueueStoreEntry?

    /// How many entries of a queue are in a state, without scanning them (a queue's size is read on
    /// every event). Entries delivered and not yet deleted are not counted.
    func countEntries(queueName: String, state: EntryState) async throws -> Int

    /// The names of the queues that hold or held entries, sorted. Cheap: a service polls it.
    func queueNames() async throws -> [String]

    // MARK: Replay

    /// Opens the claims of one replay of a queue: entries are leased to `owner` for
    /// `leaseDuration` (by `clock`) as ``ReplayClaims/next()`` hands them out. How many are leased
    /// at a time, and when deliveries are deleted, is the driver's business; see ``ReplayClaims``.
    func claims(
        queueName: String, order: ReplayOrder, owner: LeaseOwner, leaseDuration: Duration, clock: any WallClock
    ) -> any ReplayClaims

    // MARK: Administration

    /// Moves dead letters of a queue back to pending, at their old positions, with their attempts
    /// and last failure cleared (`ids` `nil`: all of them). Durable. Returns how many moved.
    @discardableResult
    func requeueDeadEntries(queueName: String, ids: [Int64]?) async throws -> Int

    /// Sets pending entries of a queue aside as dead letters, recording `failure` (an operator
    /// unblocking an ordered queue whose head can never be delivered). Durable. Returns how many
    /// moved. A replay does not send an entry set aside (or deleted) before it is handed out; one
    /// already in flight stays set aside whatever that replay records, unless the server accepts it
    /// (then it is deleted).
    @discardableResult
    func setAsideEntries(queueName: String, ids: [Int64], failure: ReplayFailure) async throws -> Int

    /// Deletes entries by id, in any queue and state. Durable. Returns how many existed.
    @discardableResult
    func deleteEntries(ids: [Int64]) async throws -> Int

    /// Deletes the entries of a queue (every queue when `queueName` is `nil`) in a state (both
    /// states when `state` is `nil`). Durable. Returns how many.
    @discardableResult
    func deleteEntries(queueName: String?, state: EntryState?) async throws -> Int

    // MARK: Sync registrations

    /// Records a sync registration (idempotent; a registered tag keeps its first date). Durable.
    func registerSyncTag(_ tag: String, at date: Date) async throws

    /// Removes a sync registration (idempotent). Durable.
    func unregisterSyncTag(_ tag: String) async throws

    /// Removes a sync registration unless the queue `queueName` holds pending entries, leased or
    /// not: what a queue's sync that succeeded does, so that entries another process pushed while
    /// it ran (finding the tag registered) keep a registration. Atomic with such pushes: a push
    /// that registers `tag` either commits before the check, or registers the tag anew after the
    /// removal. Durable. Returns whether the registration was removed (or was not there).
    ///
    /// The default implementation counts, then removes: it is not atomic with pushes of other
    /// processes; a store that other processes share overrides it.
    func unregisterSyncTag(_ tag: String, ifNoPendingEntriesIn queueName: String) async throws -> Bool

    /// The registered sync tags, oldest first.
    func syncTags() async throws -> [String]

    // MARK: Wake-ups

    /// Pushes made by any instance of the store (other processes, other hosts), soon after they
    /// commit (a store may gather a burst of pushes into one element):
    /// each element names a queue pushed to (an empty name: any queue may have new entries). A
    /// ``SyncService`` syncs at once on each instead of waiting for its poll. `nil` when the store
    /// cannot tell (the default; a SQLite file): a service relies on its poll interval. The stream
    /// ends when the store stops.
    func pushNotifications() -> AsyncStream<String>?
}

extension QueueDatabase {
    /// No notifications: a service polls (see ``pushNotifications()``).
    public func pushNotifications() -> AsyncStream<String>? { nil }

    public func unregisterSyncTag(_ tag: String, ifNoPendingEntriesIn queueName: String) async throws -> Bool {
        guard try await countEntries(queueName: queueName, state: .pending) == 0 else { return false }
        try await unregisterSyncTag(tag)
        return true
    }

    /// For a driver written before outboxes: refuses, so that an ``Outbox`` on it fails with a
    /// clear error (the conformance suite's record checks fail too until it implements this).
    public func saveEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, registeringSyncTag syncTag: String?
    ) async throws -> PushedEntry {
        throw BackgroundSyncError(.invalidRequest, "this store (\(Self.self)) cannot save entries by record key")
    }

    /// For a driver written before outboxes: refuses (see ``saveEntry(_:queueName:registeringSyncTag:)``).
    public func deleteEntries(queueName: String, recordKey: String) async throws -> Int {
        throw BackgroundSyncError(.invalidRequest, "this store (\(Self.self)) cannot delete entries by record key")
    }

    /// Every entry of a queue in a state, in queue order.
    public func entries(queueName: String, state: EntryState) async throws -> [QueueStoreEntry] {
        try await entries(queueName: queueName, state: state, afterPosition: nil, limit: nil)
    }

    /// The first pending entry of a queue (the next one an ordered replay sends), if any.
    public func headEntry(queueName: String) async throws -> QueueStoreEntry? {
        try await entries(queueName: queueName, state: .pending, afterPosition: nil, limit: 1).first
    }

    /// Every queue with its size, its dead letters and its head entry, sorted by name: a few reads
    /// per queue, none of which scans it.
    public func queueSummaries() async throws -> [QueueSummary] {
        var summaries: [QueueSummary] = []
        for name in try await queueNames() {
            let head = try await headEntry(queueName: name)
            summaries.append(
                QueueSummary(
                    name: name, size: try await countEntries(queueName: name, state: .pending),
                    deadLetterCount: try await countEntries(queueName: name, state: .dead),
                    headTimestamp: head?.timestamp, headNextAttemptAt: head?.nextAttemptAt, headLastFailure: head?.lastFailure))
        }
        return summaries
    }

    /// Deletes one entry; returns whether it existed.
    @discardableResult
    public func deleteEntry(id: Int64) async throws -> Bool {
        try await deleteEntries(ids: [id]) > 0
    }
}

/// Which end of a queue an operation works on.
public enum QueueEnd: Sendable, Hashable {
    /// The first entry (the next to be replayed).
    case head
    /// The last entry.
    case tail
}

/// What ``QueueDatabase/pushEntry(_:queueName:at:registeringSyncTag:)`` stored.
public struct PushedEntry: Sendable, Hashable {
    /// The new entry's id.
    public var id: Int64
    /// The queue's size (pending entries) right after the push.
    public var size: Int

    /// Creates a push result.
    public init(id: Int64, size: Int) {
        self.id = id
        self.size = size
    }
}

/// A queue at a glance, as ``QueueDatabase/queueSummaries()`` lists it.
public struct QueueSummary: Sendable, Hashable, Codable {
    /// The queue's name.
    public var name: String
    /// Its size: the entries waiting for replay.
    public var size: Int
    /// How many dead letters it holds.
    public var deadLetterCount: Int
    /// When the head entry (the next one replayed, the oldest in queue order) was queued, if the
    /// queue has a pending entry.
    public var headTimestamp: Date?
    /// When the head entry's next attempt is due, if it is in backoff.
    public var headNextAttemptAt: Date?
    /// How the head entry's last attempt failed, if it did (a 401 or 403 there pauses a queue
    /// by default).
    public var headLastFailure: ReplayFailure?

    /// Creates a summary.
    public init(
        name: String, size: Int, deadLetterCount: Int, headTimestamp: Date?, headNextAttemptAt: Date? = nil,
        headLastFailure: ReplayFailure? = nil
    ) {
        self.name = name
        self.size = size
        self.deadLetterCount = deadLetterCount
        self.headTimestamp = headTimestamp
        self.headNextAttemptAt = headNextAttemptAt
        self.headLastFailure = headLastFailure
    }
}
