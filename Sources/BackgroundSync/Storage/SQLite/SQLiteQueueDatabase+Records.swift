import Foundation
import GRDB

extension SQLiteQueueDatabase {
    public func saveEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, registeringSyncTag syncTag: String?
    ) async throws -> PushedEntry {
        guard let recordKey = entry.recordKey else {
            throw BackgroundSyncError(.invalidRequest, "an entry saved by record key needs a record key")
        }
        let row = try EntryRow(entry)
        let hidden = Set(undeletedDeliveries.withLock { $0[queueName] ?? [] })
        return try await write("write to", mayUseReserve: false) { db in
            let now = Date().timeIntervalSince1970
            if let syncTag { try Self.registerSyncTag(syncTag, at: now, db) }
            let last = try Row.fetchOne(
                try db.cachedStatement(sql: """
                    SELECT \(EntryColumn.list) FROM entry WHERE queueName = ? AND recordKey = ?
                    ORDER BY position DESC LIMIT 1
                    """),
                arguments: [queueName, recordKey])
            let id: Int64
            if let last, Self.liveLease(last, now: now) == nil, let lastID: Int64 = try? last.decode(atIndex: 0),
                !hidden.contains(lastID)
            {
                try db.cachedStatement(sql: """
                    UPDATE entry SET url = ?, method = ?, headers = ?, body = ?, settings = ?, timestamp = ?,
                        metadata = ?, idempotencyKey = ?, sealedSecrets = ?, state = 'pending', attempts = ?,
                        nextAttemptAt = ?, leaseOwner = NULL, leaseExpiresAt = NULL, lastFailureKind = ?,
                        lastStatus = ?, lastError = ?, lastResponseExcerpt = ?
                    WHERE id = ?
                    """
                ).execute(arguments: [
                    row.url, row.method, row.headers, row.body, row.settings, row.timestamp, row.metadata,
                    row.idempotencyKey, row.sealedSecrets, row.attempts, row.nextAttemptAt, row.failureKind,
                    row.failureStatus, row.failureMessage, row.failureExcerpt, lastID,
                ])
                id = lastID
            } else {
                let push = PendingPush(row: row, queueName: queueName, end: .tail, syncTag: nil)
                id = try Self.insert([push], db, openEnds: OpenEnds([:]))[0].id
            }
            let pending = try Int.fetchOne(
                try db.cachedStatement(sql: "SELECT pendingCount FROM queue WHERE name = ?"), arguments: [queueName]) ?? 0
            return PushedEntry(id: id, size: max(pending - (try Self.pendingCount(of: hidden, db)), 0))
        }
    }

    public func deleteEntries(queueName: String, recordKey: String) async throws -> Int {
        try await write("write to") { db in
            try db.cachedStatement(sql: "DELETE FROM entry WHERE queueName = ? AND recordKey = ?")
                .execute(arguments: [queueName, recordKey])
            return db.changesCount
        }
    }
}
