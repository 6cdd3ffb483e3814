import BackgroundSync
import Foundation
import PostgresNIO

extension PostgresQueueDatabase {
    /// The keys of the session locks held now in this database (`pg_locks` shows every session's,
    /// whoever the role).
    static let liveSessions = """
        (SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
        """

    /// Whether the row's lease holds: not expired at `$now` (the parameter number given) and its
    /// instance's session still alive. The host and process in the owner are checked apart.
    static func leaseHolds(now: Int) -> String {
        "(lease_owner IS NOT NULL AND lease_expires_at >= $\(now) AND lease_session IN \(liveSessions))"
    }

    /// `host|` and `host|pid|` of this process, as ``LeaseOwner/rawValue`` starts.
    static let ownerPrefixes: (host: String, process: String) = {
        let owner = LeaseOwner.current()
        return ("\(owner.host)|", "\(owner.host)|\(owner.processID)|")
    }()

    /// Whether a row's lease (``leaseHolds(now:)`` read as a boolean column) is held by someone:
    /// a holder that is a dead process of this host holds nothing.
    static func isHeld(holds: Bool, owner: String?) -> Bool {
        guard holds, let owner else { return false }
        return !LeaseOwner.isAbandoned(owner)
    }

    /// Registers the sync tag `$tag` (when not NULL) at `$at`, holding the tag's registration lock
    /// shared until the commit: ``unregisterSyncTag(_:ifNoPendingEntriesIn:)`` takes it exclusive
    /// and so waits for the pushes that found the tag registered. The lock is taken in the `WHERE`
    /// clause, before the insert looks for a conflicting row. `table` is the registration table's
    /// name as the statement names it.
    static func registerTag(tag: Int, at: Int, table: String) -> String {
        """
        INSERT INTO \(table)(tag, registered_at) SELECT $\(tag)::text, $\(at)::double precision
        WHERE \(registrationLock(tag: tag, mode: "_shared"))::text = '' ON CONFLICT (tag) DO NOTHING
        """
    }

    /// The call that takes the registration lock of the tag `$tag` (NULL takes nothing), in
    /// `mode` `""` (exclusive) or `"_shared"`, until the end of the transaction.
    static func registrationLock(tag: Int, mode: String) -> String {
        "pg_advisory_xact_lock\(mode)(hashtextextended('bgsync registration ' || $\(tag)::text, 0))"
    }

    /// Makes sure a queue has its row (read by ``queueNames()``), once per instance.
    func ensureQueue(_ queueName: String, _ connection: PostgresConnection) async throws {
        if knownQueues.withLock({ $0.contains(queueName) }) { return }
        try await rows(connection, sql("INSERT INTO {s}.queue(name) VALUES ($1) ON CONFLICT DO NOTHING"), binds(queueName))
    }

    /// The payload of a push's `NOTIFY`: the queue's name, or empty (any queue) for a name longer
    /// than a notification may carry.
    static func notifyPayload(_ queueName: String) -> String {
        queueName.utf8.count < 7_000 ? queueName : ""
    }

    // MARK: Adding and removing

    public func pushEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, at end: QueueEnd, registeringSyncTag syncTag: String?
    ) async throws -> PushedEntry {
        // One statement, so one round trip and one commit: the queue's row (the first time this
        // instance pushes to it), the entry and the registration. The size read sees the queue as
        // the statement started; the new entry is added to it. The other instances are notified
        // after the commit, apart (see `announcePush`). Pushes at the tail of a known queue share
        // their statement with the concurrent ones of this instance (see `PushBatcher`).
        notePushStarted()
        let knownQueue = knownQueues.withLock { $0.contains(queueName) }
        let now = Date().timeIntervalSince1970
        if knownQueue && end == .tail && BatchedPushRow.fits(entry) {
            return try await pushBatched(PushBatcher.Push(entry: entry, queueName: queueName, syncTag: syncTag, at: now))
        }
        let bindings = Self.pushBindings(entry, queueName: queueName, syncTag: syncTag, at: now)
        let position = end == .tail ? "nextval('\(prefix)tail_position')" : "-nextval('\(prefix)head_position')"
        let queueRow = knownQueue ? "" : "queue_row AS (INSERT INTO {s}.queue(name) VALUES ($1) ON CONFLICT DO NOTHING),"
        let statement = sql("""
            WITH \(queueRow)
            inserted AS (
                INSERT INTO {s}.entry(queue_name, position, counted, \(Self.contentColumns))
                VALUES ($1, \(position), true, \(Self.placeholders(from: 4, count: Self.contentColumnCount)))
                RETURNING id, queue_name),
            \(Self.countOnePush(queue: 1, table: "{s}.queue_count")),
            registration AS (\(Self.registerTag(tag: 2, at: 3, table: "{s}.sync_registration")))
            SELECT inserted.id, (SELECT coalesce(sum(pending), 0)::bigint FROM {s}.queue_count WHERE queue_name = $1) + 1
            FROM inserted
            """)
        let result = try await write("write to", singleStatement: true) { connection in
            try await self.announcingFailure(of: [queueName]) { try await self.rows(connection, statement, bindings) }
        }
        knownQueues.withLock { _ = $0.insert(queueName) }
        return try pushed(result, queueName: queueName)
    }

    /// The parameters of a push's statement (``PushAtTail`` and its variants): `$1` queue, `$2`
    /// tag or NULL, `$3` now, then ``contentColumns``.
    static func pushBindings(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, syncTag: String?, at now: Double
    ) -> PostgresBindings {
        binds([queueName, syncTag, now] as [any Bindable] + contentValues(entry))
    }

    /// The entry a push statement returned (its id and the queue's size), announced to the other
    /// instances.
    func pushed(_ result: [PostgresRow], queueName: String) throws -> PushedEntry {
        // Committed, whatever its rows say.
        announcePush(queueName)
        guard let row = result.first else { throw BackgroundSyncError(.storage, "the push returned no entry") }
        let (id, size) = try row.decode((Int64, Int64).self)
        return PushedEntry(id: id, size: Int(size))
    }

    public func saveEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, registeringSyncTag syncTag: String?
    ) async throws -> PushedEntry {
        guard let recordKey = entry.recordKey else {
            throw BackgroundSyncError(.invalidRequest, "an entry saved by record key needs a record key")
        }
        notePushStarted()
        let values = Self.contentValues(entry)
        let lockKey = Int64(bitPattern: Self.stableHash("\(configuration.schema)\u{0}\(queueName)\u{0}\(recordKey)"))
        let now = Date().timeIntervalSince1970
        // A save that failed once its statements went out is announced whatever the error (one
        // from its commit comes here mapped): it may have stored its entry.
        let sent = Locked(false)
        let saved = await Result {
            try await write("write to") { connection in
                sent.withLock { $0 = true }
                // Saves of one record wait for each other: two first saves must not both insert.
                try await self.rows(connection, "SELECT pg_advisory_xact_lock($1)", binds(lockKey))
                if let syncTag {
                    try await self.rows(
                        connection, self.sql(Self.registerTag(tag: 1, at: 2, table: "{s}.sync_registration")), binds(syncTag, now))
                }
                try await self.ensureQueue(queueName, connection)
                let last = try await self.rows(connection, self.sql("""
                    SELECT id, lease_owner, \(Self.leaseHolds(now: 3)) FROM {s}.entry
                    WHERE queue_name = $1 AND record_key = $2 ORDER BY position DESC LIMIT 1 FOR UPDATE OF entry
                    """), binds(queueName, recordKey, now)).first
                let id: Int64
                if let last, case let (lastID, owner, holds) = try last.decode((Int64, String?, Bool).self),
                    !Self.isHeld(holds: holds, owner: owner)
                {
                    let assignments = Self.contentColumns.split(separator: ",").enumerated().map { index, column in
                        "\(column.trimmingCharacters(in: .whitespacesAndNewlines)) = $\(index + 2)"
                    }.joined(separator: ", ")
                    try await self.rows(connection, self.sql("""
                        UPDATE {s}.entry SET \(assignments), state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                        lease_session = NULL WHERE id = $1
                        """), binds([lastID] as [any Bindable] + values))
                    id = lastID
                } else {
                    let inserted = try await self.rows(connection, self.sql("""
                        INSERT INTO {s}.entry(queue_name, position, \(Self.contentColumns))
                        VALUES ($1, nextval('\(self.prefix)tail_position'), \(Self.placeholders(from: 2, count: Self.contentColumnCount)))
                        RETURNING id
                        """), binds([queueName] as [any Bindable] + values))
                    id = try inserted[0].decode(Int64.self)
                }
                let size = try await self.rows(connection, self.sql("""
                    SELECT coalesce(sum(pending), 0)::bigint FROM {s}.queue_count WHERE queue_name = $1
                    """), binds(queueName))
                return PushedEntry(id: id, size: Int(try size[0].decode(Int64.self)))
            }
        }
        if sent.withLock({ $0 }) { announcePush(queueName) }
        return try saved.get()
    }

    public func deleteEntries(queueName: String, recordKey: String) async throws -> Int {
        try await write("delete from") { connection in
            try await self.count(connection, "DELETE FROM {s}.entry WHERE queue_name = $1 AND record_key = $2", binds(queueName, recordKey))
        }
    }

    public func removeEntry(queueName: String, at end: QueueEnd) async throws -> QueueStoreEntry? {
        let now = Date().timeIntervalSince1970
        let order = end == .head ? "ASC" : "DESC"
        let abandoned = try await abandonedOwners(queueName: queueName, now: now)
        return try await write("remove from") { connection in
            // Rows another remover or a lease is writing are skipped, not waited for.
            let rows = try await self.rows(connection, self.sql("""
                SELECT \(Self.entryColumns) FROM {s}.entry
                WHERE queue_name = $1 AND state = 'pending' AND (NOT \(Self.leaseHolds(now: 2)) OR lease_owner = ANY($3))
                ORDER BY position \(order) LIMIT 1 FOR UPDATE OF entry SKIP LOCKED
                """), binds(queueName, now, abandoned))
            guard let row = rows.first else { return nil }
            let entry = try Self.decode(row)
            try await self.rows(connection, self.sql("DELETE FROM {s}.entry WHERE id = $1"), binds(entry.id))
            return entry
        }
    }

    // MARK: Reading

    public func entries(
        queueName: String, state: EntryState, afterPosition: Int64?, limit: Int?
    ) async throws -> [QueueStoreEntry] {
        try await read("read") { connection in
            // Keyset paging on the (queue_name, state, position) index: a page costs its own size.
            try await self.rows(connection, self.sql("""
                SELECT \(Self.entryColumns) FROM {s}.entry WHERE queue_name = $1 AND state = $2
                AND ($3::bigint IS NULL OR position > $3::bigint) ORDER BY position LIMIT $4::bigint
                """), binds(queueName, state.rawValue, afterPosition, limit.map { Int64(max($0, 0)) })
            ).map { try Self.decode($0) }
        }
    }

    public func entry(id: Int64) async throws -> QueueStoreEntry? {
        try await read("read") { connection in
            try await self.rows(connection, self.sql("SELECT \(Self.entryColumns) FROM {s}.entry WHERE id = $1"), binds(id))
                .first.map { try Self.decode($0) }
        }
    }

    public func countEntries(queueName: String, state: EntryState) async throws -> Int {
        try await read("read") { connection in
            let rows = try await self.rows(connection, CountEntries.self, binds(queueName, state.rawValue))
            return Int(max(try rows[0].decode(Int64.self), 0))
        }
    }

    public func queueNames() async throws -> [String] {
        try await read("read") { connection in
            try await self.rows(connection, self.sql("SELECT name FROM {s}.queue ORDER BY name COLLATE \"C\""))
                .map { try $0.decode(String.self) }
        }
    }

    /// Runs a data-changing statement (without `RETURNING`) and returns how many rows it changed.
    func count(_ connection: PostgresConnection, _ statement: String, _ bindings: PostgresBindings) async throws -> Int {
        let rows = try await self.rows(
            connection, sql("WITH changed AS (\(statement) RETURNING 1) SELECT count(*)::bigint FROM changed"), bindings)
        return Int(try rows[0].decode(Int64.self))
    }
}
