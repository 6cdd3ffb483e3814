import Foundation
import GRDB

extension SQLiteQueueDatabase {
    @discardableResult
    public func requeueDeadEntries(queueName: String, ids: [Int64]?) async throws -> Int {
        try await write("update") { db in
            let reset = """
                UPDATE entry SET state = 'pending', attempts = 0, nextAttemptAt = NULL, leaseOwner = NULL,
                leaseExpiresAt = NULL, lastStatus = NULL, lastError = NULL, lastResponseExcerpt = NULL,
                lastFailureKind = NULL
                """
            guard let ids else {
                try db.cachedStatement(sql: reset + " WHERE queueName = ? AND state = 'dead'")
                    .execute(arguments: [queueName])
                return db.changesCount
            }
            let statement = try db.cachedStatement(sql: reset + " WHERE queueName = ? AND state = 'dead' AND id = ?")
            var moved = 0
            for id in ids {
                try statement.execute(arguments: [queueName, id])
                moved += db.changesCount
            }
            return moved
        }
    }

    @discardableResult
    public func setAsideEntries(queueName: String, ids: [Int64], failure: ReplayFailure) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        return try await write("update") { db in
            let statement = try db.cachedStatement(sql: """
                UPDATE entry SET state = 'dead', nextAttemptAt = NULL, leaseOwner = NULL, leaseExpiresAt = NULL,
                lastFailureKind = ?, lastStatus = ?, lastError = ?, lastResponseExcerpt = ?
                WHERE queueName = ? AND state = 'pending' AND id = ?
                """)
            var moved = 0
            for id in ids {
                try statement.execute(arguments: [
                    failure.kind.rawValue, failure.status, failure.message, failure.responseExcerpt, queueName, id,
                ])
                moved += db.changesCount
            }
            return moved
        }
    }

    @discardableResult
    public func deleteEntries(ids: [Int64]) async throws -> Int {
        if ids.isEmpty { return 0 }
        return try await write("delete from") { db in try Self.deleteEntries(ids, db) }
    }

    /// Deletes entries by id in the open transaction; returns how many existed.
    @discardableResult
    static func deleteEntries(_ ids: some Collection<Int64>, _ db: Database) throws -> Int {
        try execute(deleteByIDSQL, ids: ids, db)
    }

    private static let deleteByIDSQL = "DELETE FROM entry WHERE id IN (\(idList))"

    /// Deletes delivered entries in the open transaction, each while it is still leased to `owner`
    /// or was set aside meanwhile (the server accepted it, so it is no dead letter); one whose lease
    /// ran out during its send and that was replaced since (an outbox save in place) or leased by
    /// another replayer is left to that newer version or replayer.
    static func deleteDelivered(_ ids: some Collection<Int64>, owner: String, _ db: Database) throws {
        try execute(deleteDeliveredSQL, ids: ids, trailing: [owner], db)
    }

    private static let deleteDeliveredSQL =
        "DELETE FROM entry WHERE id IN (\(idList)) AND (leaseOwner = ? OR (state = 'dead' AND leaseOwner IS NULL))"

    @discardableResult
    public func deleteEntries(queueName: String?, state: EntryState?) async throws -> Int {
        var conditions: [String] = []
        var arguments: StatementArguments = []
        if let queueName {
            conditions.append("queueName = ?")
            arguments += [queueName]
        }
        if let state {
            conditions.append("state = ?")
            arguments += [state.rawValue]
        }
        let filter = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        // Entries queued after the call are not deleted, even when it goes in batches.
        let last = try await read("read") { db in try Int64.fetchOne(db, sql: "SELECT max(id) FROM entry") ?? 0 }
        let bounded = (filter.isEmpty ? " WHERE " : filter + " AND ") + "id <= ?"
        arguments += [last]
        do {
            return try await write("delete from") { [arguments] db in
                try db.execute(sql: "DELETE FROM entry" + bounded, arguments: arguments)
                return db.changesCount
            }
        } catch let error as BackgroundSyncError where Self.isDiskFull(error, path: path) {
            // On a full disk, deleting many entries at once may not fit in the room the WAL has:
            // delete them a few at a time, the WAL emptied after each batch.
            var deleted = 0
            while true {
                let count = try await write("delete from", truncatingWALAfter: true) { [arguments] db in
                    try db.execute(
                        sql: "DELETE FROM entry WHERE id IN (SELECT id FROM entry\(bounded) LIMIT 64)", arguments: arguments)
                    return db.changesCount
                }
                if count == 0 { return deleted }
                deleted += count
            }
        }
    }

    public func registerSyncTag(_ tag: String, at date: Date) async throws {
        let seconds = date.timeIntervalSince1970
        try await write("write to", mayUseReserve: false) { db in try Self.registerSyncTag(tag, at: seconds, db) }
    }

    /// Registers a sync tag in the open transaction (a registered tag keeps its first date).
    static func registerSyncTag(_ tag: String, at seconds: Double, _ db: Database) throws {
        try db.cachedStatement(
            sql: "INSERT INTO syncRegistration(tag, registeredAt) VALUES (?, ?) ON CONFLICT(tag) DO NOTHING"
        ).execute(arguments: [tag, seconds])
    }

    public func unregisterSyncTag(_ tag: String) async throws {
        try await write("write to") { db in
            try db.cachedStatement(sql: "DELETE FROM syncRegistration WHERE tag = ?").execute(arguments: [tag])
        }
    }

    public func unregisterSyncTag(_ tag: String, ifNoPendingEntriesIn queueName: String) async throws -> Bool {
        // One write transaction: pushes of every process (a push registers in its own) come
        // entirely before or after it.
        // Entries delivered and not deleted yet are not pending.
        let delivered = Self.undeletedIDs(queueName, in: undeletedDeliveries)
        return try await write("write to") { db in
            let pending = try Int64.fetchAll(
                db.cachedStatement(sql: "SELECT id FROM entry WHERE queueName = ? AND state = 'pending' LIMIT ?"),
                arguments: [queueName, delivered.count + 1])
            if pending.contains(where: { !delivered.contains($0) }) { return false }
            try db.cachedStatement(sql: "DELETE FROM syncRegistration WHERE tag = ?").execute(arguments: [tag])
            return true
        }
    }

    public func syncTags() async throws -> [String] {
        try await read("read") { db in
            try String.fetchAll(db, sql: "SELECT tag FROM syncRegistration ORDER BY registeredAt, tag")
        }
    }
}
