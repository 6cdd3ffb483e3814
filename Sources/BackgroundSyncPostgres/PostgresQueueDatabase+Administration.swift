import BackgroundSync
import Foundation
import PostgresNIO

extension PostgresQueueDatabase {
    /// Requeued entries are announced to the other instances as a push is (also when the
    /// statement's outcome is unknown, see ``announceFailedPush(_:_:)``).
    @discardableResult
    public func requeueDeadEntries(queueName: String, ids: [Int64]?) async throws -> Int {
        notePushStarted()
        let requeued = try await write("update", singleStatement: true) { connection in
            try await self.announcingFailure(of: [queueName]) {
                try await self.count(connection, """
                    UPDATE {s}.entry SET state = 'pending', attempts = 0, next_attempt_at = NULL, lease_owner = NULL,
                    lease_expires_at = NULL, lease_session = NULL, last_status = NULL, last_error = NULL,
                    last_response_excerpt = NULL, last_failure_kind = NULL
                    WHERE queue_name = $1 AND state = 'dead' AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
                    """, binds(queueName, ids))
            }
        }
        if requeued > 0 { announcePush(queueName) }
        return requeued
    }

    @discardableResult
    public func setAsideEntries(queueName: String, ids: [Int64], failure: ReplayFailure) async throws -> Int {
        guard !ids.isEmpty else { return 0 }
        return try await write("update") { connection in
            try await self.count(connection, """
                UPDATE {s}.entry SET state = 'dead', next_attempt_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                lease_session = NULL, last_failure_kind = $3, last_status = $4, last_error = $5, last_response_excerpt = $6
                WHERE queue_name = $1 AND state = 'pending' AND id = ANY($2)
                """,
                binds(queueName, ids, failure.kind.rawValue, failure.status.map(Int64.init), failure.message, failure.responseExcerpt))
        }
    }

    @discardableResult
    public func deleteEntries(ids: [Int64]) async throws -> Int {
        if ids.isEmpty { return 0 }
        return try await write("delete from") { connection in
            try await self.count(connection, "DELETE FROM {s}.entry WHERE id = ANY($1)", binds(ids))
        }
    }

    @discardableResult
    public func deleteEntries(queueName: String?, state: EntryState?) async throws -> Int {
        try await write("delete from") { connection in
            // One statement: entries queued after it started are not deleted.
            try await self.count(connection, """
                DELETE FROM {s}.entry WHERE ($1::text IS NULL OR queue_name = $1::text) AND ($2::text IS NULL OR state = $2::text)
                """, binds(queueName, state?.rawValue))
        }
    }

    /// A registration made apart from a push (a requeue's) is announced to the other instances for
    /// every queue (also when the statement's outcome is unknown): their services run the syncs of
    /// registered tags when they hear of it.
    public func registerSyncTag(_ tag: String, at date: Date) async throws {
        try await write("write to", singleStatement: true) { connection in
            try await self.announcingFailure(of: [""]) {
                try await self.rows(
                    connection, self.sql(Self.registerTag(tag: 1, at: 2, table: "{s}.sync_registration")),
                    binds(tag, date.timeIntervalSince1970))
            }
        }
        announcePush("")
    }

    public func unregisterSyncTag(_ tag: String) async throws {
        try await write("write to") { connection in
            try await self.rows(connection, self.sql("DELETE FROM {s}.sync_registration WHERE tag = $1"), binds(tag))
        }
    }

    public func unregisterSyncTag(_ tag: String, ifNoPendingEntriesIn queueName: String) async throws -> Bool {
        try await write("write to") { connection in
            // Waits for the pushes that registered the tag and have not committed yet (they hold
            // the lock shared); the next statement's snapshot sees their entries. A push that
            // comes after waits for this transaction, and registers the tag anew.
            try await self.rows(connection, "SELECT \(Self.registrationLock(tag: 1, mode: ""))", binds(tag))
            let pending = try await self.rows(connection, self.sql("""
                SELECT EXISTS (SELECT 1 FROM {s}.entry WHERE queue_name = $1 AND state = 'pending')
                """), binds(queueName))
            if try pending.first?.decode(Bool.self) == true { return false }
            try await self.rows(connection, self.sql("DELETE FROM {s}.sync_registration WHERE tag = $1"), binds(tag))
            return true
        }
    }

    public func syncTags() async throws -> [String] {
        try await read("read") { connection in
            try await self.rows(connection, self.sql("""
                SELECT tag FROM {s}.sync_registration ORDER BY registered_at, tag COLLATE "C"
                """)).map { try $0.decode(String.self) }
        }
    }

    public func claims(
        queueName: String, order: ReplayOrder, owner: LeaseOwner, leaseDuration: Duration, clock: any WallClock
    ) -> any ReplayClaims {
        PostgresReplayClaims(
            database: self, queueName: queueName, order: order, owner: owner, leaseDuration: leaseDuration, clock: clock)
    }
}
