import Foundation
import GRDB

/// The statements behind ``SQLiteReplayClaims``; each runs in the caller's open transaction.
extension SQLiteQueueDatabase {
    /// Leases, in queue order, up to `limit` pending entries from the head of a queue, other than
    /// `excluded` (entries handed out and not resolved yet). Leasing stops before an entry another
    /// replayer holds; if that is the head, nothing is leased and `busy` says who holds it. The
    /// head is leased whether or not it is in backoff (an ordered replay that runs sends it).
    static func leaseHead(
        queueName: String, owner: String, limit: Int, excluding excluded: Set<Int64>, now: Double, until expiry: Double,
        _ db: Database
    ) throws -> (entries: [QueueStoreEntry], busy: (owner: String, until: Date)?) {
        var entries: [QueueStoreEntry] = []
        let head = try db.cachedStatement(sql: """
            SELECT \(EntryColumn.list) FROM entry WHERE queueName = ? AND state = 'pending'
            ORDER BY position LIMIT ?
            """)
        scan: while entries.count < limit {
            // Rows are read in place, then leased together once the scan ends.
            let cursor = try Row.fetchCursor(head, arguments: [queueName, limit + excluded.count + entries.count])
            while entries.count < limit, let row = try cursor.next() {
                let id: Int64 = try row.decode(atIndex: EntryColumn.id.rawValue)
                if excluded.contains(id) || entries.contains(where: { $0.id == id }) { continue }
                if let lease = liveLease(row, now: now), lease.holder != owner {
                    // Order is kept: nothing past an entry another replayer holds.
                    if entries.isEmpty {
                        return ([], (lease.holder, Date(timeIntervalSince1970: lease.until)))
                    }
                    break scan
                }
                // An unreadable row is set aside (its state changes, an indexed column): scan again.
                guard let entry = try readForLease(row, db) else { continue scan }
                entries.append(entry)
            }
            break
        }
        try markLeased(entries, to: owner, until: expiry, db)
        return (entries, nil)
    }

    /// Leases, in queue order, up to `limit` pending entries of a queue that no live lease holds
    /// (this owner's included: those are in flight), other than `excluded` (handed out, even if
    /// their lease ran out), and whose next attempt is due.
    static func leaseDue(
        queueName: String, owner: String, limit: Int, excluding excluded: Set<Int64>, now: Double,
        until expiry: Double, _ db: Database
    ) throws -> [QueueStoreEntry] {
        var entries: [QueueStoreEntry] = []
        // Entries leased by a live holder are skipped; scan a bounded window past them. Rows are
        // read in place and only until enough are taken, then leased.
        let window = try db.cachedStatement(sql: """
            SELECT \(EntryColumn.list) FROM entry WHERE queueName = ? AND state = 'pending'
            AND (nextAttemptAt IS NULL OR nextAttemptAt <= ?)
            ORDER BY position LIMIT ?
            """)
        scan: while entries.count < limit {
            let cursor = try Row.fetchCursor(window, arguments: [queueName, now, limit * 4 + 64])
            while entries.count < limit, let row = try cursor.next() {
                if liveLease(row, now: now) != nil { continue }
                let id: Int64 = try row.decode(atIndex: EntryColumn.id.rawValue)
                if excluded.contains(id) || entries.contains(where: { $0.id == id }) { continue }
                // An unreadable row was set aside (its state changed): scan again.
                guard let entry = try readForLease(row, db) else { continue scan }
                entries.append(entry)
            }
            break
        }
        try markLeased(entries, to: owner, until: expiry, db)
        return entries
    }

    /// The lease on a row, unless it expired or its holder is a dead process of this host.
    static func liveLease(_ row: Row, now: Double) -> (holder: String, until: Double)? {
        // A lease that cannot be read is no lease: the entry is claimable (and set aside by
        // `readForLease(_:_:)` if the rest of the row is damaged too).
        guard let holder: String = try? row.decode(atIndex: EntryColumn.leaseOwner.rawValue),
            let until: Double = try? row.decode(atIndex: EntryColumn.leaseExpiresAt.rawValue), until >= now,
            !LeaseOwner.isAbandoned(holder)
        else { return nil }
        return (holder, until)
    }

    /// The entry of a row about to be leased. A row that cannot be decoded must neither block the
    /// queue nor vanish: it is set aside as a dead letter with the reason, and `nil` returned.
    private static func readForLease(_ row: Row, _ db: Database) throws -> QueueStoreEntry? {
        let id: Int64 = try row.decode(atIndex: EntryColumn.id.rawValue)
        let entry: QueueStoreEntry
        do {
            entry = try decode(row)
        } catch {
            try db.cachedStatement(sql: """
                UPDATE entry SET state = 'dead', lastFailureKind = ?, lastStatus = NULL, lastError = ?,
                lastResponseExcerpt = NULL, nextAttemptAt = NULL, leaseOwner = NULL, leaseExpiresAt = NULL
                WHERE id = ?
                """).execute(arguments: [ReplayFailure.Kind.unreadableEntry.rawValue, "unreadable entry: \(error)", id])
            return nil
        }
        return entry
    }

    private static let markLeasedSQL = "UPDATE entry SET leaseOwner = ?, leaseExpiresAt = ? WHERE id IN (\(idList))"
    private static let giveBackSQL =
        "UPDATE entry SET leaseOwner = NULL, leaseExpiresAt = NULL WHERE id IN (\(idList)) AND leaseOwner = ?"

    /// Leases entries read by ``readForLease(_:_:)`` to `owner` until `expiry`.
    private static func markLeased(_ entries: [QueueStoreEntry], to owner: String, until expiry: Double, _ db: Database) throws {
        try execute(markLeasedSQL, ids: entries.map(\.id), leading: [owner, expiry], db)
    }

    /// Clears this owner's leases on entries, counting nothing.
    static func giveBack(_ ids: some Collection<Int64>, owner: String, _ db: Database) throws {
        try execute(giveBackSQL, ids: ids, trailing: [owner], db)
    }

    /// Counts a failed attempt on a pending entry this owner holds, records the failure and clears
    /// the lease. An entry no longer leased to the owner (its lease ran out during the send, and it
    /// was replaced or taken since) is left as it is.
    static func recordFailure(
        _ id: Int64, owner: String, failure: ReplayFailure, nextAttemptAt: Double?, _ db: Database
    ) throws {
        try db.cachedStatement(sql: """
            UPDATE entry SET attempts = attempts + 1, nextAttemptAt = ?, lastFailureKind = ?, lastStatus = ?,
            lastError = ?, lastResponseExcerpt = ?, leaseOwner = NULL, leaseExpiresAt = NULL
            WHERE id = ? AND state = 'pending' AND leaseOwner = ?
            """).execute(arguments: [
                nextAttemptAt, failure.kind.rawValue, failure.status, failure.message, failure.responseExcerpt, id, owner,
            ])
    }

    /// Moves a pending entry this owner holds to the dead letters, counting the attempt and
    /// recording the failure; like ``recordFailure(_:owner:failure:nextAttemptAt:_:)``, it leaves
    /// an entry no longer leased to the owner as it is.
    static func deadLetter(_ id: Int64, owner: String, failure: ReplayFailure, _ db: Database) throws {
        try db.cachedStatement(sql: """
            UPDATE entry SET state = 'dead', attempts = attempts + 1, nextAttemptAt = NULL, lastFailureKind = ?,
            lastStatus = ?, lastError = ?, lastResponseExcerpt = ?, leaseOwner = NULL, leaseExpiresAt = NULL
            WHERE id = ? AND state = 'pending' AND leaseOwner = ?
            """).execute(arguments: [
                failure.kind.rawValue, failure.status, failure.message, failure.responseExcerpt, id, owner,
            ])
    }
}
