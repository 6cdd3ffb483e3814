import Foundation

/// How a replay takes a queue's entries.
public enum ReplayOrder: Sendable, Hashable {
    /// One at a time, in queue order, the head first, whether or not it is in backoff; the replayer
    /// resolves each entry before it sends the next. Another replayer holding the head makes the
    /// queue ``ClaimResult/busy(owner:until:)``: an ordered queue is replayed by one replayer at a
    /// time, and nothing is taken past an entry someone else holds.
    case ordered
    /// Up to `maxInFlight` entries sent at once, independent of each other: entries other replayers
    /// hold, and entries whose next attempt is not due yet, are skipped.
    case concurrent(maxInFlight: Int)
}

/// What ``ReplayClaims/next()`` found.
public enum ClaimResult: Sendable {
    /// The entry is leased to the claims' owner until the lease expires.
    case claimed(QueueStoreEntry)
    /// Nothing (more) to replay now.
    case empty
    /// The head entry of an ordered queue is leased by another replayer (`owner`, the raw value of
    /// a ``LeaseOwner``) whose lease has not expired: the replay must wait rather than skip it.
    /// Only in the ordered order: concurrent claims skip such entries.
    case busy(owner: String, until: Date)
}

/// The claims of one replay of one queue, from ``QueueDatabase/claims(queueName:order:owner:leaseDuration:clock:)``:
/// the entries handed out, and what became of each.
///
/// The replayer takes each entry it sends from ``next()`` (or ``nextLeasedAhead(checkedWithin:)``),
/// then calls exactly one of ``complete(_:)``, ``release(_:failure:nextAttemptAt:)`` or
/// ``deadLetter(_:failure:)`` for it, and ``finish()`` once at the end, on every path (errors and
/// cancellation included). An ordered replayer may take the next entry while the previous one is
/// in flight (so that leasing overlaps the send); it resolves that previous entry before it sends
/// the next one.
///
/// A driver batches as it likes behind these calls: lease several entries with one write and hand
/// them out one by one, delete delivered entries with the next lease, share commits between
/// replays. What it must keep:
/// - an entry is handed out to one owner at a time: a live lease of another owner is never taken
///   (one whose holder is a process of this host that no longer exists, ``LeaseOwner/isAbandoned(_:)``,
///   or that expired, is taken);
/// - an entry is handed out with at least half of `leaseDuration` left on its lease (a driver that
///   leased it ahead of time leases it again before that), and only while it is still pending and
///   leased to the owner: an entry deleted or set aside after it was leased ahead is not handed out
///   by ``next()`` (``nextLeasedAhead(checkedWithin:)`` may rely on a check as old as its caller allows);
/// - an entry handed out and not resolved is not handed out again by the same claims;
/// - an entry that cannot be read (a damaged row) is neither handed out nor left blocking the queue:
///   it becomes a dead letter with a failure of kind ``ReplayFailure/Kind/unreadableEntry``, in the
///   same write as the lease (crash-safe);
/// - ``finish()`` leaves nothing leased: every entry handed out and not resolved, and every entry
///   leased ahead, goes back untouched (no attempt counted).
///
/// Methods are called from several tasks at once in the concurrent order, and must complete even
/// when the calling task is cancelled.
public protocol ReplayClaims: AnyObject, Sendable {
    /// Hands out the next entry to send, leased to the owner.
    func next() async throws -> ClaimResult

    /// Records that the entry was delivered (or expired): it is deleted. From the moment this
    /// returns the entry is no longer listed or counted by this database instance. The deletion is
    /// crash-safe once ``finish()`` returned; a driver may make it sooner (with a later lease), and
    /// a replay that dies before it is made sends the entry again (at least once, with its
    /// `Idempotency-Key`). An entry set aside while it was in flight is deleted too (the server
    /// accepted it). Otherwise, like ``release(_:failure:nextAttemptAt:)`` and
    /// ``deadLetter(_:failure:)``, it changes the entry only while it is still leased to the
    /// owner: one whose lease ran out during its send and that another replayer took since, or
    /// that was replaced (an outbox save), is left to them.
    func complete(_ entry: QueueStoreEntry) async throws

    /// Gives the entry back with its position. With a `failure`, one failed attempt is counted, the
    /// failure recorded and the next attempt due at `nextAttemptAt` (at once when `nil`); without
    /// one, the entry goes back untouched. Crash-safe. An entry no longer pending (set aside
    /// meanwhile) is left as it is.
    func release(_ entry: QueueStoreEntry, failure: ReplayFailure?, nextAttemptAt: Date?) async throws

    /// Moves the entry to the dead letters, counting the attempt and recording `failure`. Durable.
    func deadLetter(_ entry: QueueStoreEntry, failure: ReplayFailure) async throws

    /// Ends the replay: pending deletions are made, and every entry still leased goes back
    /// untouched. Crash-safe. Called once, last.
    func finish() async throws

    /// Hands out the next entry at once, without waiting for the store, when the driver has one
    /// leased ahead that it found pending and leased to the owner at most `maxCheckAge` ago, by
    /// the claims' clock (at the lease, or at a check made with an earlier call of ``next()``);
    /// otherwise `nil`, and the caller calls ``next()``. Unlike ``next()``, it may hand out an
    /// entry deleted or set aside less than `maxCheckAge` ago: the caller accepts a check that old.
    /// Everything else ``next()`` keeps, it keeps: it returns only the entry ``next()`` would
    /// return now, with at least half of `leaseDuration` left on its lease, and that entry counts
    /// as handed out (``finish()`` gives it back if unresolved). It returns `nil` wherever
    /// ``next()`` must write or wait first: a lease to make, or one under way that ``next()``
    /// would wait for, an ordered replay to restart from the head after an entry went back
    /// untouched. An ordered replayer calls it before each send, and starts a task to call
    /// ``next()`` during the send only when it returns `nil`; a concurrent one calls it before
    /// ``next()``. The default returns `nil`.
    func nextLeasedAhead(checkedWithin maxCheckAge: Duration) -> QueueStoreEntry?
}

extension ReplayClaims {
    /// `nil`: every entry comes from ``ReplayClaims/next()``.
    public func nextLeasedAhead(checkedWithin maxCheckAge: Duration) -> QueueStoreEntry? { nil }
}
