import Foundation
import GRDB

extension SQLiteQueueDatabase {
    public func pushEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, at end: QueueEnd, registeringSyncTag syncTag: String?
    ) async throws -> PushedEntry {
        try await pushes.submit(PendingPush(row: try EntryRow(entry), queueName: queueName, end: end, syncTag: syncTag))
    }

    /// A queue's ends and pending count as the open transaction leaves them.
    struct QueueEnds {
        /// The lowest position taken (the next entry unshifted goes just before).
        var head: Int64
        /// The highest position taken (the next entry pushed goes just after).
        var tail: Int64
        var pendingCount: Int
    }

    /// The ends of the queues that the open push transaction wrote to, so that the pushes appended
    /// to it later need not read them again. Used on the writer only, one transaction at a time;
    /// emptied when a transaction begins.
    typealias OpenEnds = Locked<[String: QueueEnds]>

    /// Inserts a batch of entries in the current transaction; returns, in batch order, each one's
    /// id and the queue's pending count once it is in.
    ///
    /// At the tail the entries follow each other in batch order; at the head the last one of the
    /// batch comes first, as if unshifted one by one. A queue's ends are read once per
    /// transaction (its row is created if needed), then kept in `openEnds`; the insert trigger
    /// moves them in the database.
    static func insert(_ batch: [PendingPush], _ db: Database, openEnds: OpenEnds) throws -> [PushedEntry] {
        let insertEntry = try db.cachedStatement(sql: """
            INSERT INTO entry(queueName, position, url, method, headers, body, settings, timestamp, metadata,
                idempotencyKey, sealedSecrets, recordKey, attempts, nextAttemptAt, lastFailureKind, lastStatus,
                lastError, lastResponseExcerpt)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        var results: [PushedEntry] = []
        results.reserveCapacity(batch.count)
        for item in batch {
            var ends = try openEnds.withLock({ $0[item.queueName] }) ?? readEnds(of: item.queueName, db)
            let position: Int64
            if item.end == .tail {
                ends.tail += 1
                position = ends.tail
            } else {
                ends.head -= 1
                position = ends.head
            }
            let row = item.row
            try insertEntry.execute(arguments: [
                item.queueName, position, row.url, row.method, row.headers, row.body, row.settings,
                row.timestamp, row.metadata, row.idempotencyKey, row.sealedSecrets, row.recordKey, row.attempts,
                row.nextAttemptAt, row.failureKind, row.failureStatus, row.failureMessage, row.failureExcerpt,
            ])
            ends.pendingCount += 1
            results.append(PushedEntry(id: db.lastInsertedRowID, size: ends.pendingCount))
            openEnds.withLock { $0[item.queueName] = ends }
        }
        return results
    }

    /// Reads a queue's ends, creating its row the first time.
    private static func readEnds(of queueName: String, _ db: Database) throws -> QueueEnds {
        let select = try db.cachedStatement(sql: "SELECT headPosition, tailPosition, pendingCount FROM queue WHERE name = ?")
        if let row = try Row.fetchOne(select, arguments: [queueName]) {
            return QueueEnds(
                head: try row.decode(atIndex: 0), tail: try row.decode(atIndex: 1),
                pendingCount: try row.decode(atIndex: 2))
        }
        try db.cachedStatement(sql: "INSERT INTO queue(name) VALUES (?)").execute(arguments: [queueName])
        // The columns' defaults: nothing taken yet on either side of position 1.
        return QueueEnds(head: 1, tail: 0, pendingCount: 0)
    }

    public func removeEntry(queueName: String, at end: QueueEnd) async throws -> QueueStoreEntry? {
        let now = Date().timeIntervalSince1970
        return try await write("remove from") { db in
            let order = end == .head ? "ASC" : "DESC"
            let select = try db.cachedStatement(sql: """
                SELECT \(EntryColumn.list) FROM entry WHERE queueName = ? AND state = 'pending'
                ORDER BY position \(order)
                """)
            let cursor = try Row.fetchCursor(select, arguments: [queueName])
            while let row = try cursor.next() {
                if Self.liveLease(row, now: now) != nil { continue }
                let entry = try Self.decode(row)
                try db.cachedStatement(sql: "DELETE FROM entry WHERE id = ?").execute(arguments: [entry.id])
                return entry
            }
            return nil
        }
    }

    public func entries(
        queueName: String, state: EntryState, afterPosition: Int64?, limit: Int?
    ) async throws -> [QueueStoreEntry] {
        let hidden = undeletedIDs(queueName)
        let sqlLimit = limit.map { $0 + hidden.count } ?? -1
        var entries = try await read("read") { db in
            // Keyset paging on the (queueName, state, position) index: a page costs its own size.
            // Two statements: one `(?3 IS NULL OR position > ?3)` keeps the planner from seeking to
            // the position (it steps over every entry before it).
            let select = try db.cachedStatement(sql: """
                SELECT \(EntryColumn.list) FROM entry WHERE queueName = ?1 AND state = ?2
                \(afterPosition == nil ? "" : "AND position > ?3")
                ORDER BY position LIMIT ?4
                """)
            return try Row.fetchAll(select, arguments: [queueName, state.rawValue, afterPosition, sqlLimit]).map(Self.decode)
        }
        if !hidden.isEmpty { entries.removeAll { hidden.contains($0.id) } }
        if let limit, entries.count > limit { entries.removeLast(entries.count - limit) }
        return entries
    }

    public func entry(id: Int64) async throws -> QueueStoreEntry? {
        try await read("read") { db in
            try Row.fetchOne(
                try db.cachedStatement(sql: "SELECT \(EntryColumn.list) FROM entry WHERE id = ?"), arguments: [id]
            ).map(Self.decode)
        }
    }

    public func countEntries(queueName: String, state: EntryState) async throws -> Int {
        let column = state == .pending ? "pendingCount" : "deadCount"
        let hidden = state == .pending ? undeletedIDs(queueName) : []
        return try await read("read") { db in
            let stored = try Int.fetchOne(
                try db.cachedStatement(sql: "SELECT \(column) FROM queue WHERE name = ?"), arguments: [queueName]) ?? 0
            return max(stored - (try Self.pendingCount(of: hidden, db)), 0)
        }
    }

    public func queueNames() async throws -> [String] {
        try await read("read") { db in
            try String.fetchAll(db, sql: "SELECT name FROM queue ORDER BY name")
        }
    }

    // MARK: Deliveries not deleted yet

    /// Notes entries a replay delivered: left out of counts and lists until ``forgetDeliveries(_:of:)``.
    func noteDeliveries(_ ids: some Sequence<Int64>, of queueName: String) {
        undeletedDeliveries.withLock { $0[queueName, default: []].formUnion(ids) }
    }

    /// Forgets entries noted by ``noteDeliveries(_:of:)`` (deleted, or pending again).
    func forgetDeliveries(_ ids: some Sequence<Int64>, of queueName: String) {
        undeletedDeliveries.withLock { deliveries in
            deliveries[queueName]?.subtract(ids)
            if deliveries[queueName]?.isEmpty == true { deliveries[queueName] = nil }
        }
    }

    private func undeletedIDs(_ queueName: String) -> Set<Int64> {
        Self.undeletedIDs(queueName, in: undeletedDeliveries)
    }

    static func undeletedIDs(_ queueName: String, in deliveries: Locked<[String: Set<Int64>]>) -> Set<Int64> {
        deliveries.withLock { $0[queueName] ?? [] }
    }

    /// How many of `ids` are pending rows as the open transaction sees them. A count subtracts
    /// these, not the noted deliveries themselves: a delivery deleted after the set was read is no
    /// longer in the count it was read with.
    static func pendingCount(of ids: Set<Int64>, _ db: Database) throws -> Int {
        guard !ids.isEmpty else { return 0 }
        let list = ids.map(String.init).joined(separator: ",")
        return try Int.fetchOne(db, sql: "SELECT count(*) FROM entry WHERE state = 'pending' AND id IN (\(list))") ?? 0
    }
}
