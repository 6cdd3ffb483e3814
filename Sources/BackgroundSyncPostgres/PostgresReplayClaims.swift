import BackgroundSync
import Foundation
import PostgresNIO

/// The claims of one replay on a ``PostgresQueueDatabase``.
///
/// Each ``next()`` leases one entry in a transaction of its own: the head of an ordered queue
/// (waiting for a lease being written on it, then `busy` if another live replayer holds it), or
/// the first due entry of a concurrent queue that nobody holds (`FOR UPDATE SKIP LOCKED`, so
/// workers of a fleet never wait for each other). Every lease names the instance's session lock:
/// once that session ends, the lease is free. A delivered entry is deleted at once.
final class PostgresReplayClaims: ReplayClaims {
    private struct State {
        /// Handed out and not resolved yet.
        var handedOut: Set<Int64> = []
        /// Released with a failure: not handed out again by these claims (an ordered replay that
        /// goes on after a failure goes past it).
        var failed: Set<Int64> = []
        /// Owners of live-looking leases that are dead processes of this host, found at the first
        /// concurrent lease (a process that dies later ends its session, which frees its leases).
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
        var abandoned: [String] = []
        if case .concurrent = order {
            if let known = state.withLock({ $0.abandoned }) {
                abandoned = known
            } else {
                abandoned = try await database.abandonedOwners(queueName: queueName, now: now)
                state.withLock { $0.abandoned = abandoned }
            }
        }
        let result = try await database.write("claim from", durable: false) { [abandoned] connection in
            switch order {
            case .ordered:
                try await database.leaseHead(
                    queueName: queueName, owner: owner, excluding: excluded, now: now, until: expiry, connection)
            case .concurrent:
                try await database.leaseDue(
                    queueName: queueName, owner: owner, excluding: excluded, abandoned: abandoned, now: now, until: expiry,
                    connection)
            }
        }
        if case .claimed(let entry) = result {
            let finished = state.withLock { state in
                if !state.finished { state.handedOut.insert(entry.id) }
                return state.finished
            }
            // Finished meanwhile (by another task): the lease goes back at once.
            if finished {
                try await database.write("update", durable: false) { connection in
                    try await database.giveBack([entry.id], owner: owner, connection)
                }
                return .empty
            }
        }
        return result
    }

    func complete(_ entry: QueueStoreEntry) async throws {
        let (database, owner) = (database, owner)
        try await database.write("delete from", durable: false) { connection in
            // Only the version this replay sent: an entry saved anew (an outbox record changed)
            // after its lease was lost has no lease, and stays. One set aside meanwhile (dead, no
            // lease) was accepted by the server after all: deleted.
            try await database.rows(connection, database.sql("""
                DELETE FROM {s}.entry WHERE id = $1 AND (lease_owner = $2 OR (state = 'dead' AND lease_owner IS NULL))
                """), binds(entry.id, owner))
        }
        _ = state.withLock { $0.handedOut.remove(entry.id) }
    }

    func release(_ entry: QueueStoreEntry, failure: ReplayFailure?, nextAttemptAt: Date?) async throws {
        let (database, owner) = (database, owner)
        try await database.write("update", durable: false) { connection in
            if let failure {
                try await database.rows(connection, database.sql("""
                    UPDATE {s}.entry SET attempts = attempts + 1, next_attempt_at = $3, last_failure_kind = $4,
                    last_status = $5, last_error = $6, last_response_excerpt = $7, lease_owner = NULL,
                    lease_expires_at = NULL, lease_session = NULL
                    WHERE id = $1 AND state = 'pending' AND lease_owner = $2
                    """),
                    binds(
                        entry.id, owner, nextAttemptAt?.timeIntervalSince1970, failure.kind.rawValue,
                        failure.status.map(Int64.init), failure.message, failure.responseExcerpt))
            } else {
                try await database.giveBack([entry.id], owner: owner, connection)
            }
        }
        state.withLock { state in
            state.handedOut.remove(entry.id)
            if failure != nil { state.failed.insert(entry.id) }
        }
    }

    func deadLetter(_ entry: QueueStoreEntry, failure: ReplayFailure) async throws {
        let (database, owner) = (database, owner)
        try await database.write("update") { connection in
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
        let (database, owner) = (database, owner)
        try await database.write("update", durable: false) { connection in
            try await database.giveBack(givingBack, owner: owner, connection)
        }
    }
}

/// The statements behind ``PostgresReplayClaims``; each runs in the caller's open transaction.
extension PostgresQueueDatabase {
    /// Leases the first pending entry of a queue other than `excluded` (entries handed out and not
    /// resolved yet), whether or not it is in backoff, unless another live replayer holds it
    /// (`busy`). A lease being written on that row is waited for, so that two replayers never
    /// both take the head. A row that cannot be read is set aside, and the next one tried.
    func leaseHead(
        queueName: String, owner: String, excluding excluded: [Int64], now: Double, until expiry: Double,
        _ connection: PostgresConnection
    ) async throws -> ClaimResult {
        let key = try currentSessionKey()
        while true {
            let rows = try await rows(connection, sql("""
                SELECT \(Self.entryColumns), lease_owner, lease_expires_at, \(Self.leaseHolds(now: 3)),
                $4 IN \(Self.liveSessions) FROM {s}.entry
                WHERE queue_name = $1 AND state = 'pending' AND NOT (id = ANY($2))
                ORDER BY position LIMIT 1 FOR UPDATE OF entry
                """), binds(queueName, excluded, now, key))
            guard let row = rows.first else { return .empty }
            let cells = row.makeRandomAccess()
            let base = Self.entryColumnCount
            try requireSession(try cells[base + 3].decode(Bool.self))
            let holder = try cells[base].decode(String?.self)
            if let holder, holder != owner, Self.isHeld(holds: try cells[base + 2].decode(Bool.self), owner: holder) {
                let until = try cells[base + 1].decode(Double.self)
                return .busy(owner: holder, until: Date(timeIntervalSince1970: until))
            }
            guard let entry = try await lease(row, to: owner, key: key, until: expiry, connection) else { continue }
            return .claimed(entry)
        }
    }

    /// Leases the first pending entry of a queue, in queue order, that is due, that no live lease
    /// holds (this owner's included: those are in flight; `abandoned` owners hold nothing) and that
    /// is not in `excluded`. Rows another replayer is leasing are skipped; one row is locked.
    func leaseDue(
        queueName: String, owner: String, excluding excluded: [Int64], abandoned: [String], now: Double,
        until expiry: Double, _ connection: PostgresConnection
    ) async throws -> ClaimResult {
        let key = try currentSessionKey()
        while true {
            let rows = try await rows(connection, sql("""
                SELECT \(Self.entryColumns), $5 IN \(Self.liveSessions) FROM {s}.entry
                WHERE queue_name = $1 AND state = 'pending' AND NOT (id = ANY($2))
                AND (next_attempt_at IS NULL OR next_attempt_at <= $3)
                AND (NOT \(Self.leaseHolds(now: 3)) OR lease_owner = ANY($4))
                ORDER BY position LIMIT 1 FOR UPDATE OF entry SKIP LOCKED
                """), binds(queueName, excluded, now, abandoned, key))
            guard let row = rows.first else { return .empty }
            try requireSession(try row.makeRandomAccess()[Self.entryColumnCount].decode(Bool.self))
            // An unreadable row was set aside: the next one.
            guard let entry = try await lease(row, to: owner, key: key, until: expiry, connection) else { continue }
            return .claimed(entry)
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

    /// Leases a row's entry to `owner` under this instance's session and returns it. A row that
    /// cannot be read must neither block the queue nor vanish: it is set aside as a dead letter
    /// with the reason, and `nil` returned.
    private func lease(
        _ row: PostgresRow, to owner: String, key: Int64, until expiry: Double, _ connection: PostgresConnection
    ) async throws -> QueueStoreEntry? {
        let id = try row.makeRandomAccess()[0].decode(Int64.self)
        let entry: QueueStoreEntry
        do {
            entry = try Self.decode(row)
        } catch {
            try await rows(connection, sql("""
                UPDATE {s}.entry SET state = 'dead', last_failure_kind = $2, last_status = NULL, last_error = $3,
                last_response_excerpt = NULL, next_attempt_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                lease_session = NULL WHERE id = $1
                """), binds(id, ReplayFailure.Kind.unreadableEntry.rawValue, "unreadable entry: \(error)"))
            return nil
        }
        try await rows(connection, sql("""
            UPDATE {s}.entry SET lease_owner = $2, lease_expires_at = $3, lease_session = $4 WHERE id = $1
            """), binds(id, owner, expiry, key))
        return entry
    }

    /// A lease names this instance's session lock: without it, another worker would take the entry
    /// at once.
    private func requireSession(_ held: Bool) throws {
        guard held else { throw sessionLost() }
    }

    /// The key of the session lock leases name now; throws while the session is lost.
    private func currentSessionKey() throws -> Int64 {
        guard let key = sessionKey else { throw sessionLost() }
        return key
    }

    private func sessionLost() -> BackgroundSyncError {
        BackgroundSyncError(
            .storage, "the PostgreSQL store \(identity) has lost its session (connecting again): no entry can be leased now")
    }

    /// Clears this owner's leases on entries, counting nothing.
    func giveBack(_ ids: [Int64], owner: String, _ connection: PostgresConnection) async throws {
        guard !ids.isEmpty else { return }
        try await rows(connection, sql("""
            UPDATE {s}.entry SET lease_owner = NULL, lease_expires_at = NULL, lease_session = NULL
            WHERE id = ANY($1) AND lease_owner = $2
            """), binds(ids, owner))
    }
}
