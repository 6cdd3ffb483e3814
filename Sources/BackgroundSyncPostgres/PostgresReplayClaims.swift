import BackgroundSync
import Foundation
import PostgresNIO

/// The claims of one replay on a ``PostgresQueueDatabase``.
///
/// Each ``next()`` leases one entry in one statement: the head of an ordered queue (waiting for a
/// lease being written on it, then `busy` if another live replayer holds it), or the first due
/// entry of a concurrent queue that nobody holds (`FOR UPDATE SKIP LOCKED`, so workers of a fleet
/// never wait for each other). Every lease names the instance's session lock: once that session
/// ends, the lease is free. A delivered entry is deleted at once. Bookkeeping statements commit
/// with `synchronous_commit` off (``PostgresQueueDatabase/relaxed``).
final class PostgresReplayClaims: ReplayClaims {
    private struct State {
        /// Handed out and not resolved yet.
        var handedOut: Set<Int64> = []
        /// Released with a failure: not handed out again by these claims (an ordered replay that
        /// goes on after a failure goes past it).
        var failed: Set<Int64> = []
        /// Owners of live-looking leases that are dead processes of this host, found at the first
        /// lease (a process that dies later ends its session, which frees its leases).
        var abandoned: [String]?
        var finished = false
    }

    private let database: PostgresQueueDatabase
    private let queueName: String
    private let order: ReplayOrder
    private let owner: String
    private let leaseDuration: Duration
    private let clock: any WallClock
    private let state = Locked(State())

    init(
        database: PostgresQueueDatabase, queueName: String, order: ReplayOrder, owner: LeaseOwner,
        leaseDuration: Duration, clock: any WallClock
    ) {
        self.database = database
        self.queueName = queueName
        self.order = order
        self.owner = owner.rawValue
        self.leaseDuration = leaseDuration
        self.clock = clock
    }

    func next() async throws -> ClaimResult {
        guard let excluded = state.withLock({ $0.finished ? nil : Array($0.handedOut.union($0.failed)) }) else {
            return .empty
        }
        let now = clock.now.timeIntervalSince1970
        let expiry = now + leaseDuration.timeInterval
        let (database, queueName, owner, order) = (database, queueName, owner, order)
        let abandoned: [String]
        if let known = state.withLock({ $0.abandoned }) {
            abandoned = known
        } else {
            abandoned = try await database.abandonedOwners(queueName: queueName, now: now)
            state.withLock { $0.abandoned = abandoned }
        }
        let result = try await database.lease(
            queueName: queueName, order: order, owner: owner, excluding: excluded, abandoned: abandoned, now: now,
            until: expiry)
        if case .claimed(let entry) = result {
            let finished = state.withLock { state in
                if !state.finished { state.handedOut.insert(entry.id) }
                return state.finished
            }
            // Finished meanwhile (by another task): the lease goes back at once.
            if finished {
                try await database.giveBack([entry.id], owner: owner)
                return .empty
            }
        }
        return result
    }

    func complete(_ entry: QueueStoreEntry) async throws {
        let (database, owner) = (database, owner)
        // Only the version this replay sent: an entry saved anew (an outbox record changed) after
        // its lease was lost has no lease, and stays. One set aside meanwhile (dead, no lease) was
        // accepted by the server after all: deleted.
        try await database.write("delete from", singleStatement: true) { connection in
            try await database.rows(connection, PostgresQueueDatabase.DeleteDelivered.self, binds(entry.id, owner))
        }
        _ = state.withLock { $0.handedOut.remove(entry.id) }
    }

    func release(_ entry: QueueStoreEntry, failure: ReplayFailure?, nextAttemptAt: Date?) async throws {
        let (database, owner) = (database, owner)
        if let failure {
            let bindings = binds(
                entry.id, owner, nextAttemptAt?.timeIntervalSince1970, failure.kind.rawValue,
                failure.status.map(Int64.init), failure.message, failure.responseExcerpt)
            try await database.write("update", singleStatement: true) { connection in
                try await database.rows(connection, PostgresQueueDatabase.RecordFailure.self, bindings)
            }
        } else {
            try await database.giveBack([entry.id], owner: owner)
        }
        state.withLock { state in
            state.handedOut.remove(entry.id)
            if failure != nil { state.failed.insert(entry.id) }
        }
    }

    func deadLetter(_ entry: QueueStoreEntry, failure: ReplayFailure) async throws {
        let (database, owner) = (database, owner)
        try await database.write("update", singleStatement: true) { connection in
            try await database.rows(connection, database.sql("""
                UPDATE {s}.entry SET state = 'dead', attempts = attempts + 1, next_attempt_at = NULL,
                last_failure_kind = $3, last_status = $4, last_error = $5, last_response_excerpt = $6,
                lease_owner = NULL, lease_expires_at = NULL, lease_session = NULL
                WHERE id = $1 AND state = 'pending' AND lease_owner = $2
                """),
                binds(
                    entry.id, owner, failure.kind.rawValue, failure.status.map(Int64.init), failure.message,
                    failure.responseExcerpt))
        }
        _ = state.withLock { $0.handedOut.remove(entry.id) }
    }

    func finish() async throws {
        let givingBack = state.withLock { state -> [Int64] in
            state.finished = true
            defer { state.handedOut = [] }
            return Array(state.handedOut)
        }
        guard !givingBack.isEmpty else { return }
        try await database.giveBack(givingBack, owner: owner)
    }
}

/// The statements behind ``PostgresReplayClaims``.
extension PostgresQueueDatabase {
    /// A common table expression that makes the statement's own commit skip the wait for the
    /// WAL flush (`synchronous_commit` off for its implicit transaction: crash-safe, not durable).
    /// The statement must read `relaxed` for it to take effect.
    static let relaxed = "relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS setting)"

    /// The keys of the session locks held now in this database, as a table `live(key)`.
    static let live = """
        live AS (SELECT (l.classid::bigint << 32) | l.objid::bigint AS key FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
        """

    /// ``entryColumns`` of the table aliased `e`.
    static let aliasedEntryColumns = entryColumns.split(separator: ",")
        .map { "e." + $0.trimmingCharacters(in: .whitespacesAndNewlines) }.joined(separator: ", ")

    /// Leases the next entry for a replay, in one statement, under this instance's session.
    ///
    /// In order: the first pending entry other than `excluded` (handed out and not resolved yet),
    /// whether or not it is in backoff, waiting for a lease being written on it, unless another
    /// live replayer holds it (`busy`). Concurrent: the first due pending entry that no live lease
    /// holds (this owner's included: those are in flight) and not in `excluded`, skipping rows
    /// another replayer is leasing. Owners in `abandoned` hold nothing. A row that cannot be read
    /// is set aside, and the next one taken.
    func lease(
        queueName: String, order: ReplayOrder, owner: String, excluding excluded: [Int64], abandoned: [String],
        now: Double, until expiry: Double
    ) async throws -> ClaimResult {
        let key = try currentSessionKey()
        let bindings = binds(queueName, excluded, now, key, owner, expiry, abandoned)
        while true {
            let rows = try await write("claim from", singleStatement: true) { connection in
                switch order {
                case .ordered: try await self.rows(connection, LeaseHead.self, bindings)
                case .concurrent: try await self.rows(connection, LeaseDue.self, bindings)
                }
            }
            guard let row = rows.first else { return .empty }
            let cells = row.makeRandomAccess()
            guard try cells[0].decode(Bool.self) else {
                dropSession(key: key)
                throw sessionLost()
            }
            // No candidate: nothing (more) to replay now.
            guard let holds = try cells[3].decode(Bool?.self) else { return .empty }
            guard try cells[4].decode(Int64?.self) != nil else {
                // In order, the head is another live replayer's.
                guard holds, let holder = try cells[1].decode(String?.self), let until = try cells[2].decode(Double?.self)
                else { return .empty }
                return .busy(owner: holder, until: Date(timeIntervalSince1970: until))
            }
            do {
                return .claimed(try Self.decode(row, from: 4))
            } catch {
                // An unreadable row must neither block the queue nor vanish: set aside, with the
                // reason, and the next one taken.
                let id = try cells[4].decode(Int64.self)
                try await write("update", singleStatement: true) { connection in
                    try await self.rows(connection, self.sql("""
                        UPDATE {s}.entry SET state = 'dead', last_failure_kind = $2, last_status = NULL, last_error = $3,
                        last_response_excerpt = NULL, next_attempt_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                        lease_session = NULL WHERE id = $1
                        """), binds(id, ReplayFailure.Kind.unreadableEntry.rawValue, "unreadable entry: \(error)"))
                }
            }
        }
    }

    /// The owners of leases on a queue that look live (not expired, their session alive) but are
    /// processes of this host that no longer exist (``LeaseOwner/isAbandoned(_:)``).
    func abandonedOwners(queueName: String, now: Double) async throws -> [String] {
        let prefixes = Self.ownerPrefixes
        return try await read("read") { connection in
            try await self.rows(connection, self.sql("""
                SELECT DISTINCT lease_owner FROM {s}.entry WHERE queue_name = $1 AND state = 'pending'
                AND \(Self.leaseHolds(now: 2)) AND starts_with(lease_owner, $3) AND NOT starts_with(lease_owner, $4)
                """), binds(queueName, now, prefixes.host, prefixes.process))
        }.map { try $0.decode(String.self) }.filter(LeaseOwner.isAbandoned)
    }

    /// The key of the session lock leases name now; throws while the session is lost.
    private func currentSessionKey() throws -> Int64 {
        guard let key = sessionKey else { throw sessionLost() }
        return key
    }

    /// A lease names this instance's session lock: without it, another worker would take the entry
    /// at once.
    private func sessionLost() -> BackgroundSyncError {
        BackgroundSyncError(
            .storage, "the PostgreSQL store \(identity) has lost its session (connecting again): no entry can be leased now")
    }

    /// Clears this owner's leases on entries, counting nothing.
    func giveBack(_ ids: [Int64], owner: String) async throws {
        guard !ids.isEmpty else { return }
        try await write("update", singleStatement: true) { connection in
            try await self.rows(connection, GiveBack.self, binds(ids, owner))
        }
    }
}
