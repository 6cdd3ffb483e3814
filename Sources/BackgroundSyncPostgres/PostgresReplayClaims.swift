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
        let result = try await database.write("claim from", durable: false) { connection in
            switch order {
            case .ordered:
                try await database.leaseHead(
                    queueName: queueName, owner: owner, excluding: excluded, now: now, until: expiry, connection)
            case .concurrent:
                try await database.leaseDue(
                    queueName: queueName, owner: owner, excluding: excluded, now: now, until: expiry, connection)
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
        try await database.write("delete from", durable: false) { [database] connection in
            try await database.rows(connection, database.sql("DELETE FROM {s}.entry WHERE id = $1"), binds(entry.id))
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
                    WHERE id = $1 AND state = 'pending' AND (lease_owner IS NULL OR lease_owner = $2)
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
                WHERE id = $1 AND state = 'pending' AND (lease_owner IS NULL OR lease_owner = $2)
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
        while true {
            let rows = try await rows(connection, sql("""
                SELECT \(Self.entryColumns), lease_owner, lease_expires_at, \(Self.leaseHolds(now: 3)),
                $4 IN \(Self.liveSessions) FROM {s}.entry
                WHERE queue_name = $1 AND state = 'pending' AND NOT (id = ANY($2))
                ORDER BY position LIMIT 1 FOR UPDATE OF entry
                """), binds(queueName, excluded, now, sessionKey))
            guard let row = rows.first else { return .empty }
            let cells = row.makeRandomAccess()
            let base = Self.entryColumnCount
            try requireSession(try cells[base + 3].decode(Bool.self))
            let holder = try cells[base].decode(String?.self)
            if let holder, holder != owner, Self.isHeld(holds: try cells[base + 2].decode(Bool.self), owner: holder) {
                let until = try cells[base + 1].decode(Double.self)
                return .busy(owner: holder, until: Date(timeIntervalSince1970: until))
            }
            guard let entry = try await lease(row, to: owner, until: expiry, connection) else { continue }
            return .claimed(entry)
        }
    }

    /// Leases the first pending entry of a queue, in queue order, that is due, that no live lease
    /// holds (this owner's included: those are in flight) and that is not in `excluded`. Rows
    /// another replayer is leasing are skipped.
    func leaseDue(
        queueName: String, owner: String, excluding excluded: [Int64], now: Double, until expiry: Double,
        _ connection: PostgresConnection
    ) async throws -> ClaimResult {
        let prefixes = Self.ownerPrefixes
        while true {
            let rows = try await rows(connection, sql("""
                SELECT \(Self.entryColumns), lease_owner, \(Self.leaseHolds(now: 3)), $6 IN \(Self.liveSessions)
                FROM {s}.entry
                WHERE queue_name = $1 AND state = 'pending' AND NOT (id = ANY($2))
                AND (next_attempt_at IS NULL OR next_attempt_at <= $3)
                AND \(Self.leaseMayBeFree(now: 3, host: 4, process: 5))
                ORDER BY position LIMIT 16 FOR UPDATE OF entry SKIP LOCKED
                """), binds(queueName, excluded, now, prefixes.host, prefixes.process, sessionKey))
            var setAside = false
            for row in rows {
                let cells = row.makeRandomAccess()
                let base = Self.entryColumnCount
                try requireSession(try cells[base + 2].decode(Bool.self))
                if Self.isHeld(holds: try cells[base + 1].decode(Bool.self), owner: try cells[base].decode(String?.self)) {
                    continue
                }
                guard let entry = try await lease(row, to: owner, until: expiry, connection) else {
                    setAside = true
                    continue
                }
                return .claimed(entry)
            }
            if !setAside { return .empty }
        }
    }

    /// Leases a row's entry to `owner` under this instance's session and returns it. A row that
    /// cannot be read must neither block the queue nor vanish: it is set aside as a dead letter
    /// with the reason, and `nil` returned.
    private func lease(_ row: PostgresRow, to owner: String, until expiry: Double, _ connection: PostgresConnection)
        async throws -> QueueStoreEntry?
    {
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
            """), binds(id, owner, expiry, sessionKey))
        return entry
    }

    /// A lease names this instance's session lock: without it, another worker would take the entry
    /// at once.
    private func requireSession(_ held: Bool) throws {
        guard held else {
            throw BackgroundSyncError(
                .storage, "the PostgreSQL store \(identity) has lost its session (connecting again): no entry can be leased now")
        }
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
