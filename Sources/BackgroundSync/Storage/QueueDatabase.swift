import Foundation

/// Which end of a queue an operation works on.
public enum QueueEnd: Sendable, Hashable {
    /// The first entry (the next to be replayed).
    case head
    /// The last entry.
    case tail
}

/// A queue as listed by ``QueueDatabase/queueSummaries()``.
public struct QueueSummary: Sendable, Hashable, Codable {
    /// The queue's name.
    public var name: String
    /// Entries waiting for replay.
    public var pending: Int
    /// Dead letters.
    public var dead: Int
    /// When the oldest pending entry was queued, if there is one.
    public var oldestPendingTimestamp: Date?

    /// Creates a summary.
    public init(name: String, pending: Int, dead: Int, oldestPendingTimestamp: Date?) {
        self.name = name
        self.pending = pending
        self.dead = dead
        self.oldestPendingTimestamp = oldestPendingTimestamp
    }
}

/// What ``QueueDatabase/insertEntry(_:queueName:at:registeringSyncTag:)`` stored.
public struct InsertedEntry: Sendable, Hashable {
    /// The new entry's id.
    public var id: Int64
    /// The queue's pending entries after the insert.
    public var queueSize: Int

    /// Creates an insert result.
    public init(id: Int64, queueSize: Int) {
        self.id = id
        self.queueSize = queueSize
    }
}

/// The outcome of ``QueueDatabase/claimHead(queueName:owner:leaseDuration:now:)``.
public enum ClaimResult: Sendable {
    /// The head entry is now leased to the caller until the lease expires.
    case claimed(QueueStoreEntry)
    /// The queue has no pending entry.
    case empty
    /// The head entry is leased by another replayer (another process, or another task) whose lease
    /// has not expired; an ordered queue must wait rather than skip it.
    case busy(owner: String, until: Date)
}

/// The outcome of ``QueueDatabase/completeClaimsAndClaimHead(completing:current:owner:queueName:limit:leaseDuration:now:)``.
public struct HeadClaim: Sendable {
    /// The entries now leased to the caller, in queue order.
    public var entries: [QueueStoreEntry]
    /// Set when nothing was leased because the head entry is leased by another replayer whose
    /// lease has not expired; an ordered queue must wait rather than skip it.
    public var busy: (owner: String, until: Date)?

    /// Creates a claim result.
    public init(entries: [QueueStoreEntry], busy: (owner: String, until: Date)?) {
        self.entries = entries
        self.busy = busy
    }
}

/// The replay state of a queue's head entry.
public struct HeadState: Sendable, Hashable {
    /// The head entry's id.
    public var id: Int64
    /// Its failed attempts so far.
    public var attempts: Int
    /// When its next attempt is due, if it is in backoff.
    public var nextAttemptAt: Date?
    /// The HTTP status of its last failure; `nil` when it never failed or got no response.
    public var lastStatus: Int?
    /// Whether its last failure was a missing response (offline, refused, reset, timeout).
    public var lastFailureWasTransport: Bool

    /// Creates a head state.
    public init(id: Int64, attempts: Int, nextAttemptAt: Date?, lastStatus: Int?, lastFailureWasTransport: Bool) {
        self.id = id
        self.attempts = attempts
        self.nextAttemptAt = nextAttemptAt
        self.lastStatus = lastStatus
        self.lastFailureWasTransport = lastFailureWasTransport
    }
}

/// What a failed replay left on its entry.
public struct ReplayFailure: Sendable, Hashable {
    /// The HTTP status, when a response came back.
    public var status: Int?
    /// A one-line description of the failure.
    public var error: String
    /// The first bytes of the response body, when a response came back.
    public var responseExcerpt: Data?

    /// Creates a failure record.
    public init(status: Int? = nil, error: String, responseExcerpt: Data? = nil) {
        self.status = status
        self.error = error
        self.responseExcerpt = responseExcerpt
    }
}

/// The storage driver behind queues: one database holds the entries of many queues and the
/// sync registrations.
///
/// Implementations must make every method atomic (one transaction), durable when it returns,
/// and safe to call from several tasks and several processes at once. Entries are ordered per
/// queue by a position: `insertEntry(at: .tail)` goes after the queue's last entry, `at: .head`
/// before its first, whatever other queues hold.
///
/// Replay never deletes an entry before the server answered: it *claims* the head entry with a
/// lease (``claimHead(queueName:owner:leaseDuration:now:)``), sends it, then completes (deletes),
/// releases (counts a failed attempt) or dead-letters the claim. A lease whose holder died expires,
/// and the entry can be claimed again.
public protocol QueueDatabase: Sendable {
    /// A string that identifies the storage (the canonical file path for a SQLite file), so that two
    /// live queues with one name on one storage can be refused.
    var identity: String { get }

    /// Stores a new entry at the head or the tail of a queue, and, when `syncTag` is given, registers
    /// that sync tag in the same transaction (so no entry is ever stored without its registration).
    /// Returns the entry's id and the queue's pending count after the insert.
    func insertEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, at end: QueueEnd, registeringSyncTag syncTag: String?
    ) async throws -> InsertedEntry

    /// Removes and returns the first or last pending entry of a queue that no live replay holds,
    /// or `nil` when there is none.
    func removeEntry(queueName: String, from end: QueueEnd) async throws -> QueueStoreEntry?

    /// The entries of a queue in a state, in queue order.
    func entries(queueName: String, state: EntryState) async throws -> [QueueStoreEntry]

    /// The entry with this id, in any queue and state.
    func entry(id: Int64) async throws -> QueueStoreEntry?

    /// How many entries of a queue are in a state. Must not scan the queue.
    func countEntries(queueName: String, state: EntryState) async throws -> Int

    /// Deletes entries by id; returns how many existed.
    @discardableResult
    func deleteEntries(ids: [Int64]) async throws -> Int

    /// The names of the queues that hold or held entries.
    func queueNames() async throws -> [String]

    /// Every queue with its pending and dead-lettered counts and its oldest pending entry's time.
    func queueSummaries() async throws -> [QueueSummary]

    /// Deletes the entries of a queue (every queue when `queueName` is `nil`) in a state (any state
    /// when `state` is `nil`); returns how many.
    @discardableResult
    func deleteEntries(queueName: String?, state: EntryState?) async throws -> Int

    /// Leases the head pending entry of a queue to `owner` until `now + leaseDuration`.
    ///
    /// A head entry leased by someone else stays theirs (``ClaimResult/busy(owner:until:)``) unless
    /// its lease expired or its owner is a process of this host that no longer exists. A head row
    /// that cannot be decoded is dead-lettered with the reason, and the next entry is claimed.
    func claimHead(queueName: String, owner: LeaseOwner, leaseDuration: Duration, now: Date) async throws -> ClaimResult

    /// Leases up to `limit` pending entries of a queue, in order, that no live replay holds and
    /// whose next attempt is due (`nextAttemptAt` unset or not after `now`): the concurrent mode,
    /// where entries are independent and one in backoff must not hold the others back.
    func claimEntries(
        queueName: String, owner: LeaseOwner, limit: Int, leaseDuration: Duration, now: Date
    ) async throws -> [QueueStoreEntry]

    /// The replay state of a queue's head entry (the next to send), or `nil` when the queue has
    /// no pending entry. A scheduler uses it to decide when the queue's sync is due.
    func headState(queueName: String) async throws -> HeadState?

    /// Moves dead-lettered entries of a queue back to pending, at their old positions, with their
    /// attempt count reset. `ids == nil` requeues them all. Returns how many moved.
    @discardableResult
    func requeueDeadEntries(queueName: String, ids: [Int64]?) async throws -> Int

    /// Deletes the delivered entries `completing` and leases, in queue order, up to `limit` pending
    /// entries at the head of the queue other than `current` (the entry being sent), in one
    /// transaction. Leasing stops before an entry that another replayer holds (with a live lease);
    /// if that is the head, nothing is leased and ``HeadClaim/busy`` says who holds it. An
    /// unreadable entry is set aside as a dead letter, as ``claimHead(queueName:owner:leaseDuration:now:)``
    /// does. An ordered replay leases a few entries ahead and, while it sends the last of them,
    /// deletes the delivered ones and leases the next: one commit per few entries, made while a
    /// request is in flight.
    func completeClaimsAndClaimHead(
        completing: [Int64], current: Int64?, owner: LeaseOwner, queueName: String, limit: Int,
        leaseDuration: Duration, now: Date
    ) async throws -> HeadClaim

    /// Deletes delivered entries and leases up to `limit` more (as ``claimEntries(queueName:owner:limit:leaseDuration:now:)``)
    /// in the same transaction, so that a concurrent replay pays one commit per batch of claims.
    /// `limit` 0 only deletes. A default implementation does it in several steps.
    func completeClaimsAndClaimEntries(
        ids: [Int64], owner: LeaseOwner, queueName: String, limit: Int, leaseDuration: Duration, now: Date
    ) async throws -> [QueueStoreEntry]

    /// Gives back claimed entries untouched (no attempt counted), in one transaction: a replay that
    /// stops before sending the entries it leased ahead. Entries no longer leased to `owner` are left alone.
    func abandonClaims(ids: [Int64], owner: LeaseOwner) async throws

    /// Deletes a claimed entry after the server accepted it. Does nothing if the entry is gone.
    func completeClaim(id: Int64, owner: LeaseOwner) async throws

    /// Gives a claimed entry back, counting one failed attempt, recording the failure and the
    /// earliest time of the next attempt. The entry keeps its position.
    func releaseClaim(id: Int64, owner: LeaseOwner, failure: ReplayFailure, nextAttemptAt: Date?) async throws

    /// Moves a claimed entry to the dead-letter state, counting the attempt and recording why.
    func deadLetterClaim(id: Int64, owner: LeaseOwner, failure: ReplayFailure) async throws

    /// Records a sync registration (idempotent).
    func registerSyncTag(_ tag: String, at date: Date) async throws

    /// Removes a sync registration (idempotent).
    func unregisterSyncTag(_ tag: String) async throws

    /// The registered sync tags, oldest first.
    func syncTags() async throws -> [String]
}

extension QueueDatabase {
    public func completeClaimsAndClaimEntries(
        ids: [Int64], owner: LeaseOwner, queueName: String, limit: Int, leaseDuration: Duration, now: Date
    ) async throws -> [QueueStoreEntry] {
        for id in ids { try await completeClaim(id: id, owner: owner) }
        guard limit > 0 else { return [] }
        return try await claimEntries(
            queueName: queueName, owner: owner, limit: limit, leaseDuration: leaseDuration, now: now)
    }

    /// Gives back one claimed entry untouched (see ``abandonClaims(ids:owner:)``).
    public func abandonClaim(id: Int64, owner: LeaseOwner) async throws {
        try await abandonClaims(ids: [id], owner: owner)
    }

    /// Deletes one entry; returns whether it existed.
    @discardableResult
    public func deleteEntry(id: Int64) async throws -> Bool {
        try await deleteEntries(ids: [id]) > 0
    }
}
