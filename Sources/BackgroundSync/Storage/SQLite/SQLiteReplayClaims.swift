import Foundation
import GRDB

/// The claims of one replay on a ``SQLiteQueueDatabase``.
///
/// Entries are leased several at a time, in one commit, and handed out one by one: an ordered
/// replay leases ``orderedLeaseAhead`` entries from the head (more while the server answers fast,
/// see ``fastBatch``), a concurrent one keeps about twice its in-flight limit leased ahead.
/// Delivered entries are deleted in the commit that leases the next
/// ones (or at ``finish()``), so a replay pays one commit per few entries, and an ordered replay,
/// which asks for the next entry while the current one is in flight, makes that commit during the
/// send. Entries leased ahead are leased again once half their lease is gone, and each is checked
/// by ``next()`` when it hands it out: one deleted or set aside meanwhile, by this process or
/// another, is skipped. A check reads the following entries with it (up to
/// ``SQLiteQueueDatabase/leaseCheckLimit`` in one statement), and notes when each was found
/// leased, as a lease does: ``nextLeasedAhead(checkedWithin:)`` hands out, without a read, an
/// entry found leased recently enough for its caller. When the last quarter of an ordered
/// replay's batch or less is left, ``next()`` leases again from the head instead of checking
/// (``renewsTail(_:)``). Once asked to (``prepareRequests()``), a lease also rebuilds and checks
/// the requests of the entries it leased, after its commit, in the task that asked for the lease:
/// in an ordered replay that task runs during a send, so the replay takes each request ready
/// (``preparedRequest(for:)``) instead of building it between two sends.
final class SQLiteReplayClaims: ReplayClaims, PreparingReplayClaims {
    /// How many entries an ordered replay leases at a time, at first and whenever the server is
    /// slow. The price of batching: a process that dies mid-replay may send again the delivered
    /// entries of the batch (each with its `Idempotency-Key`), and other processes list them
    /// until the next lease deletes them.
    static let orderedLeaseAhead = 8
    /// The most an ordered replay leases at a time (see ``fastBatch``).
    static let orderedLeaseAheadMax = 64
    /// An ordered replay's batch doubles, up to ``orderedLeaseAheadMax``, when at the pace of the
    /// previous batch it would go out within this time; otherwise it is ``orderedLeaseAhead``. So
    /// the price of batching stays about this much work, or ``orderedLeaseAhead`` entries; a server
    /// that slows down in the middle of a large batch makes it up to ``orderedLeaseAheadMax``.
    static let fastBatch: TimeInterval = 0.05

    private struct State {
        /// Leased ahead and not handed out yet, in queue order, and when they were leased.
        var leased = LeasedAhead()
        var leasedAt: Date?
        /// When each entry leased ahead was last found pending and leased to this replay.
        var checkedAt: [Int64: Date] = [:]
        /// In order: an entry went back (or turned out not to be ours), so what is leased ahead
        /// must go back too and the next lease start from the head. A lease under way does not
        /// clear it.
        var restartFromHead = false
        /// An entry went back since the last lease started: pending again at the head, it would be
        /// taken again by a lease from the head.
        var releasedSinceLease = false
        /// Handed out and not resolved yet.
        var handedOut: Set<Int64> = []
        /// Delivered and not deleted yet, oldest first.
        var delivered: [Int64] = []
        /// A lease is being written; other callers of a concurrent replay wait for it.
        var leasing = false
        var waiters: [UnsafeContinuation<Void, Never>] = []
        /// The last lease got fewer entries than it asked for, and how many it got.
        var drained = false
        var lastLeased = 0
        /// How many entries the next lease of an ordered replay asks for.
        var orderedBatch = orderedLeaseAhead
        var finished = false
        /// Whether leases build the requests of the entries they lease (``prepareRequests()``).
        var preparing = false
        /// The requests the leases built, by entry id, until taken, or until the entry is given back
        /// or found no longer leased; each lease of an entry replaces its request (with nothing
        /// when it could not be built).
        var prepared: [Int64: StorableRequest] = [:]
        /// How many requests ``preparedRequest(for:)`` handed out.
        var preparedTaken = 0
    }

    /// What one lease commit does.
    private struct LeaseWork {
        var deleting: [Int64]
        var givingBack: [QueueStoreEntry]
        /// When the entries given back were leased (they keep that time if the commit fails).
        var givingBackLeasedAt: Date?
        var excluding: Set<Int64>
        /// The ordered replay was to restart from the head (restored if the commit fails).
        var restartingFromHead: Bool
        /// An entry had gone back since the previous lease started (restored if the commit fails).
        var releasedBefore: Bool
        var limit: Int
        /// Builds the requests of the entries it leases.
        var preparing: Bool
    }

    private let database: SQLiteQueueDatabase
    private let queueName: String
    private let order: ReplayOrder
    private let owner: String
    private let leaseDuration: Duration
    private let clock: any WallClock
    private let state = Locked(State())

    init(
        database: SQLiteQueueDatabase, queueName: String, order: ReplayOrder, owner: LeaseOwner,
        leaseDuration: Duration, clock: any WallClock
    ) {
        self.database = database
        self.queueName = queueName
        self.order = order
        self.owner = owner.rawValue
        self.leaseDuration = leaseDuration
        self.clock = clock
    }

    private enum Step {
        case take(QueueStoreEntry)
        case wait
        case lease(LeaseWork)
        case done(ClaimResult)
    }

    func next() async throws -> ClaimResult {
        // Entries this call leased need no check; those leased by an earlier call do.
        var justLeased: Set<Int64> = []
        while true {
            let now = clock.now
            switch state.withLock({ plan(&$0, now: now) }) {
            case .take(let entry):
                if justLeased.contains(entry.id) { return .claimed(entry) }
                let following = state.withLock { state in
                    state.leased.entries.prefix(SQLiteQueueDatabase.leaseCheckLimit - 1).map(\.id)
                }
                let valid = try await database.leased(among: [entry.id] + following, to: owner)
                state.withLock { state in
                    // Only for entries still leased ahead; one found gone waits for `next()`.
                    for id in following where state.leased.entries.contains(where: { $0.id == id }) {
                        state.checkedAt[id] = valid.contains(id) ? now : nil
                    }
                }
                if valid.contains(entry.id) { return .claimed(entry) }
                state.withLock { state in
                    state.handedOut.remove(entry.id)
                    state.prepared[entry.id] = nil
                    // In order, nothing may be sent past it (it may be pending again, or held by
                    // someone else): lease again from the head.
                    if case .ordered = order { state.restartFromHead = true }
                }
            case .done(let result):
                return result
            case .wait:
                // What this call leased before waiting is checked like any entry leased ahead.
                justLeased = []
                await withUnsafeContinuation { continuation in
                    let waiting = state.withLock { state -> Bool in
                        guard state.leasing else { return false }
                        state.waiters.append(continuation)
                        return true
                    }
                    if !waiting { continuation.resume() }
                }
            case .lease(let work):
                let (busy, leased) = try await lease(work, now: now)
                if let busy { return busy }
                if case .ordered = order, state.withLock({ $0.leased.isEmpty }) { return .empty }
                justLeased.formUnion(leased)
            }
        }
    }

    func nextLeasedAhead(checkedWithin maxCheckAge: Duration) -> QueueStoreEntry? {
        let now = clock.now
        return state.withLock { state in
            // What `next()` would take now without a lease, found leased recently enough (an age
            // below zero, the clock gone back, counts as too old).
            guard !state.finished, takesLeasedAhead(state, now: now), let first = state.leased.firstID,
                let leasedAt = state.leasedAt, now >= leasedAt,
                let checkedAt = state.checkedAt[first], now >= checkedAt,
                now.timeIntervalSince(checkedAt) <= maxCheckAge.timeInterval
            else { return nil }
            return handOutLeasedAhead(&state)
        }
    }

    /// Whether ``next()`` hands out the first entry leased ahead rather than starting a lease or
    /// waiting for one: in order, while the lease is fresh and nothing went back; concurrently,
    /// while the lease is fresh and above the low water that starts the next lease (or while one is
    /// under way, or none is left).
    private func takesLeasedAhead(_ state: State, now: Date) -> Bool {
        guard !state.leased.isEmpty, !isStale(state, now: now) else { return false }
        switch order {
        case .ordered:
            return !state.restartFromHead
        case .concurrent(let maxInFlight):
            return state.leasing || state.drained || state.leased.count > max(maxInFlight / 2, 1)
        }
    }

    /// Whether ``next()`` of an ordered replay leases again from the head, taking back the few
    /// entries left of its batch with the next ones, rather than checking them with a read. An
    /// ordered replayer calls ``next()`` for an entry leased ahead only when
    /// ``nextLeasedAhead(checkedWithin:)`` found it checked too long ago, which at the end of a
    /// batch that takes longer to send than that age happens to each of its last entries: the
    /// lease finds them as a check would, for two row writes, a read and a rebuilt request each
    /// on the writer's connection instead of a read that reloads the check connection's pages,
    /// and the batch's next lease comes that many entries earlier. A tail entry checked recently
    /// enough is still handed out by ``nextLeasedAhead(checkedWithin:)``: this lease is never one
    /// that ``next()`` must make first.
    /// Only for the last quarter of a batch at most, so a slow server's entries are still checked
    /// (each batch then takes one commit per three quarters of its entries instead of one per
    /// batch); and not after an entry went back, which a lease from the head would take again.
    private func renewsTail(_ state: State) -> Bool {
        guard case .ordered = order, !state.restartFromHead, !state.releasedSinceLease else { return false }
        return state.leased.count <= state.lastLeased / 4
    }

    /// Whether half of the lease of the entries leased ahead is gone: they are leased again before
    /// one is handed out.
    private func isStale(_ state: State, now: Date) -> Bool {
        state.leasedAt.map { now.timeIntervalSince($0) > leaseDuration.timeInterval / 2 } ?? false
    }

    /// Hands out the first entry leased ahead, if any.
    private func handOutLeasedAhead(_ state: inout State) -> QueueStoreEntry? {
        guard let entry = state.leased.popFirst() else { return nil }
        state.handedOut.insert(entry.id)
        state.checkedAt[entry.id] = nil
        return entry
    }

    /// Decides what a call of ``next()`` does, under the lock.
    private func plan(_ state: inout State, now: Date) -> Step {
        if state.finished { return .done(.empty) }
        if takesLeasedAhead(state, now: now), !renewsTail(state), let entry = handOutLeasedAhead(&state) {
            return .take(entry)
        }
        let stale = isStale(state, now: now)
        switch order {
        case .ordered:
            if state.leasing { return .wait }
            // The previous batch went out whole, or but for its tail (no entry went back, not
            // stale): `leasedAt` is when it was leased, and all of it but the tail and the entry in
            // flight was sent since.
            if !stale, !state.restartFromHead, state.lastLeased == state.orderedBatch, let previous = state.leasedAt {
                let sent = state.lastLeased - state.leased.count - 1
                let pace = now.timeIntervalSince(previous) / Double(max(sent, 1))
                let larger = min(state.orderedBatch * 2, Self.orderedLeaseAheadMax)
                state.orderedBatch = pace * Double(larger) < Self.fastBatch ? larger : Self.orderedLeaseAhead
            } else {
                state.orderedBatch = Self.orderedLeaseAhead
            }
            return .lease(startLease(&state, limit: state.orderedBatch, givingBackAll: true))
        case .concurrent(let maxInFlight):
            if state.leasing { return .wait }
            if state.leased.isEmpty && state.drained && state.lastLeased == 0 { return .done(.empty) }
            let wanted = max(2 * maxInFlight - state.handedOut.count - (stale ? 0 : state.leased.count), 1)
            return .lease(startLease(&state, limit: wanted, givingBackAll: stale))
        }
    }

    /// Marks a lease as running and says what it does: delete the deliveries so far, give back the
    /// entries leased ahead when they are all to be leased again, lease up to `limit` more.
    private func startLease(_ state: inout State, limit: Int, givingBackAll: Bool) -> LeaseWork {
        state.leasing = true
        var work = LeaseWork(
            deleting: state.delivered, givingBack: [], givingBackLeasedAt: nil, excluding: state.handedOut,
            restartingFromHead: state.restartFromHead, releasedBefore: state.releasedSinceLease, limit: limit,
            preparing: state.preparing)
        state.releasedSinceLease = false
        if givingBackAll {
            (work.givingBack, work.givingBackLeasedAt) = (state.leased.removeAll(), state.leasedAt)
            // A lease that takes them again builds their requests again (the replay builds those
            // of entries restored by a lease that failed).
            for entry in work.givingBack { state.prepared[entry.id] = nil }
            state.leasedAt = nil
            state.checkedAt = [:]
            state.restartFromHead = false
        } else {
            // Kept leased ahead: an entry among them whose lease was cleared meanwhile (set aside and
            // requeued) must not be leased a second time and held twice.
            work.excluding.formUnion(state.leased.entries.lazy.map(\.id))
        }
        return work
    }

    /// Runs one lease commit; returns a result for the caller when an ordered queue is busy, and the
    /// ids it leased.
    private func lease(_ work: LeaseWork, now: Date) async throws -> (ClaimResult?, [Int64]) {
        let (queueName, owner, order) = (queueName, owner, order)
        let (nowSeconds, expiry) = (now.timeIntervalSince1970, now.timeIntervalSince1970 + leaseDuration.timeInterval)
        let outcome: Result<(entries: [QueueStoreEntry], busy: (owner: String, until: Date)?), any Error>
        do {
            outcome = .success(try await database.write("claim from", .crashSafe) { db in
                try SQLiteQueueDatabase.deleteDelivered(work.deleting, owner: owner, db)
                try SQLiteQueueDatabase.giveBack(work.givingBack.map(\.id), owner: owner, db)
                switch order {
                case .ordered:
                    return try SQLiteQueueDatabase.leaseHead(
                        queueName: queueName, owner: owner, limit: work.limit, excluding: work.excluding,
                        now: nowSeconds, until: expiry, db)
                case .concurrent:
                    let entries = try SQLiteQueueDatabase.leaseDue(
                        queueName: queueName, owner: owner, limit: work.limit, excluding: work.excluding,
                        now: nowSeconds, until: expiry, db)
                    return (entries, nil)
                }
            })
        } catch {
            outcome = .failure(error)
        }
        // Outside the lock: built for a few dozen entries at a time (in an ordered replay, while it
        // sends).
        var requests: [(id: Int64, request: StorableRequest?)] = []
        if work.preparing, case .success(let leased) = outcome {
            requests = leased.entries.map { entry in
                // An entry with sealed secret fields is rebuilt with them by the replay.
                (entry.id, entry.sealedSecrets == nil ? try? StorableRequest(requestData: entry.requestData) : nil)
            }
        }
        let waiters = state.withLock { state -> [UnsafeContinuation<Void, Never>] in
            state.leasing = false
            switch outcome {
            case .success(let leased):
                state.delivered.removeFirst(min(work.deleting.count, state.delivered.count))
                state.leasedAt = state.leased.isEmpty ? now : min(state.leasedAt ?? now, now)
                state.leased.append(contentsOf: leased.entries)
                for entry in leased.entries { state.checkedAt[entry.id] = now }
                for (id, request) in requests { state.prepared[id] = request }
                state.drained = leased.entries.count < work.limit
                state.lastLeased = leased.entries.count
            case .failure:
                // Nothing changed in the database: what was to be given back is still leased, since
                // the time it was leased.
                state.leased = LeasedAhead(work.givingBack + state.leased.entries)
                state.restartFromHead = state.restartFromHead || work.restartingFromHead
                state.releasedSinceLease = state.releasedSinceLease || work.releasedBefore
                if let leasedAt = work.givingBackLeasedAt {
                    state.leasedAt = min(state.leasedAt ?? leasedAt, leasedAt)
                }
            }
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
        let leased = try outcome.get()
        database.forgetDeliveries(work.deleting, of: queueName)
        return (leased.busy.map { .busy(owner: $0.owner, until: $0.until) }, leased.entries.map(\.id))
    }

    func prepareRequests() {
        state.withLock { $0.preparing = true }
    }

    func preparedRequest(for entry: QueueStoreEntry) -> StorableRequest? {
        state.withLock { state in
            let request = state.prepared.removeValue(forKey: entry.id)
            if request != nil { state.preparedTaken += 1 }
            return request
        }
    }

    /// How many prepared requests the replay took (for tests).
    var preparedRequestsTaken: Int { state.withLock { $0.preparedTaken } }

    func complete(_ entry: QueueStoreEntry) async throws {
        // Noted under the claims' lock: a lease that takes the delivery for deletion (and forgets
        // it once deleted) can only do so after it is noted.
        state.withLock { state in
            state.handedOut.remove(entry.id)
            state.delivered.append(entry.id)
            database.noteDeliveries(CollectionOfOne(entry.id), of: queueName)
        }
    }

    func release(_ entry: QueueStoreEntry, failure: ReplayFailure?, nextAttemptAt: Date?) async throws {
        let owner = owner
        let next = nextAttemptAt?.timeIntervalSince1970
        try await database.write("update", .crashSafe) { db in
            if let failure {
                try SQLiteQueueDatabase.recordFailure(entry.id, owner: owner, failure: failure, nextAttemptAt: next, db)
            } else {
                try SQLiteQueueDatabase.giveBack(CollectionOfOne(entry.id), owner: owner, db)
            }
        }
        state.withLock { state in
            state.handedOut.remove(entry.id)
            state.releasedSinceLease = true
            // Given back untouched, it comes first again in order: so must the ones leased after it.
            if failure == nil, case .ordered = order { state.restartFromHead = true }
        }
    }

    func deadLetter(_ entry: QueueStoreEntry, failure: ReplayFailure) async throws {
        let owner = owner
        try await database.write("update") { db in
            try SQLiteQueueDatabase.deadLetter(entry.id, owner: owner, failure: failure, db)
        }
        _ = state.withLock { $0.handedOut.remove(entry.id) }
    }

    func finish() async throws {
        let (deleting, givingBack) = state.withLock { state -> ([Int64], [Int64]) in
            state.finished = true
            defer {
                state.delivered = []
                state.leased = LeasedAhead()
                state.checkedAt = [:]
                state.handedOut = []
                state.prepared = [:]
            }
            return (state.delivered, state.leased.entries.map(\.id) + state.handedOut)
        }
        guard !deleting.isEmpty || !givingBack.isEmpty else { return }
        let owner = owner
        // Deletions and give-backs in one commit; if it fails, the deliveries are pending again
        // (sent again) and the leases expire.
        defer { database.forgetDeliveries(deleting, of: queueName) }
        try await database.write("update", .crashSafe) { db in
            try SQLiteQueueDatabase.deleteDelivered(deleting, owner: owner, db)
            try SQLiteQueueDatabase.giveBack(givingBack, owner: owner, db)
        }
    }
}
