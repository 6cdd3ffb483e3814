import BackgroundSync
import Foundation
import PostgresNIO

/// The text of a statement run often enough to be prepared once per connection (parsed and
/// planned once, its plan reused): table names are unqualified, found through the pool's
/// `search_path` (the store's schema), so that the text is the same for every store.
protocol StatementText {
    static var sql: String { get }
}

/// A prepared statement of PostgresNIO for a ``StatementText``, its rows returned as they are.
struct Prepared<Text: StatementText>: PostgresPreparedStatement {
    typealias Row = PostgresRow
    static var sql: String { Text.sql }
    /// A short name: PostgreSQL cuts names at 63 bytes, and PostgresNIO's default (the type's full
    /// name) would make every statement's the same.
    static var name: String { "bgsync_\(Text.self)" }
    let bindings: PostgresBindings

    func makeBindings() -> PostgresBindings { bindings }
    func decodeRow(_ row: PostgresRow) -> PostgresRow { row }
}

extension PostgresQueueDatabase {
    /// Runs a prepared statement and returns its rows (see ``ensureOpen(_:)``).
    @discardableResult
    func rows<Text: StatementText>(_ connection: PostgresConnection, _ text: Text.Type, _ bindings: PostgresBindings)
        async throws -> [PostgresRow]
    {
        try ensureOpen(connection)
        var rows: [PostgresRow] = []
        for try await row in try await connection.execute(Prepared<Text>(bindings: bindings), logger: logger) {
            rows.append(row)
        }
        return rows
    }

    /// A push at the tail of a queue this instance pushed to before (its row exists): the entry and
    /// the registration, and the queue's size as the statement started. `$1` queue, `$2` tag or
    /// NULL, `$3` now, then ``contentColumns`` from `$4`.
    enum PushAtTail: StatementText {
        static let sql = """
            WITH inserted AS (
                INSERT INTO entry(queue_name, position, counted, \(contentColumns))
                VALUES ($1, nextval('tail_position'), true, \(placeholders(from: 4, count: contentColumnCount)))
                RETURNING id, queue_name),
            \(countOnePush(queue: 1, table: "queue_count")),
            registration AS (\(registerTag(tag: 2, at: 3, table: "sync_registration")))
            SELECT inserted.id, (SELECT coalesce(sum(pending), 0)::bigint FROM queue_count WHERE queue_name = $1) + 1
            FROM inserted
            """
    }

    /// Pushes at the tail of queues this instance pushed to before, several in one statement (see
    /// ``PushBatcher``): `$1` a JSON array of ``BatchedPushRow``s, `$2` now. Registers their sync
    /// tags as ``PushAtTail`` does (in the tags' order, so that two batches take their locks and
    /// rows in the same order). Returns, for each pushed entry, its place in the array (from 1),
    /// its id, and its queue's size with it: as the statement started, plus the entries of the
    /// array up to it in that queue. `input` is read three times and calls `nextval`, so
    /// PostgreSQL evaluates it once (a CTE with a volatile function is always materialized): each
    /// entry has one position, by which the inserted rows are matched to their places.
    enum PushBatch: StatementText {
        static let sql = """
            WITH input AS (
                SELECT r.*, item.ord, nextval('tail_position') AS pos
                FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS item(value, ord),
                jsonb_to_record(item.value) AS r(\(BatchedPushRow.recordColumns))
            ),
            inserted AS (
                INSERT INTO entry(queue_name, position, counted, \(contentColumns))
                SELECT q, pos, true, \(BatchedPushRow.contentExpressions) FROM input ORDER BY q, ord
                RETURNING id, position, queue_name
            ),
            \(countPushed(table: "queue_count")),
            registration AS (
                INSERT INTO sync_registration(tag, registered_at)
                SELECT tag, $2::double precision FROM (SELECT DISTINCT t AS tag FROM input WHERE t IS NOT NULL ORDER BY 1) AS tags
                WHERE pg_advisory_xact_lock_shared(hashtextextended('bgsync registration ' || tag, 0))::text = ''
                ON CONFLICT (tag) DO NOTHING
            )
            SELECT input.ord, inserted.id,
                (SELECT coalesce(sum(pending), 0)::bigint FROM queue_count WHERE queue_name = input.q)
                + row_number() OVER (PARTITION BY input.q ORDER BY input.ord)
            FROM input JOIN inserted ON inserted.position = input.pos
            """
    }

    /// A queue's size in one state (`$2`: `pending` or `dead`).
    enum CountEntries: StatementText {
        static let sql = """
            SELECT coalesce(sum(CASE WHEN $2::text = 'pending' THEN pending ELSE dead END), 0)::bigint
            FROM queue_count WHERE queue_name = $1
            """
    }

    /// The lease of the next entry of an ordered queue (see ``lease(queueName:order:owner:excluding:abandoned:now:until:)``).
    enum LeaseHead: StatementText {
        static let sql = leaseStatement(candidate: """
            candidate AS (
                SELECT id, lease_owner, lease_expires_at,
                (lease_owner IS NOT NULL AND lease_expires_at >= $3 AND lease_session IN (SELECT key FROM live)) AS holds
                FROM entry WHERE queue_name = $1 AND state = 'pending' AND NOT (id = ANY($2))
                ORDER BY position LIMIT 1 FOR UPDATE)
            """)
    }

    /// The lease of the next due entry of a concurrent queue.
    enum LeaseDue: StatementText {
        static let sql = leaseStatement(candidate: """
            candidate AS (
                SELECT id, lease_owner, lease_expires_at, false AS holds
                FROM entry WHERE queue_name = $1 AND state = 'pending' AND NOT (id = ANY($2))
                AND (next_attempt_at IS NULL OR next_attempt_at <= $3)
                AND (lease_owner IS NULL OR lease_expires_at < $3 OR lease_session IS NULL
                    OR lease_session NOT IN (SELECT key FROM live) OR lease_owner = ANY($7))
                ORDER BY position LIMIT 1 FOR UPDATE SKIP LOCKED)
            """)
    }

    /// A lease statement around its `candidate` row: `$1` queue, `$2` excluded ids, `$3` now,
    /// `$4` this session's key, `$5` owner, `$6` expiry, `$7` abandoned owners. One row: whether
    /// the session is held, the candidate's holder, expiry and whether its lease holds, then the
    /// leased entry's ``entryColumns`` (NULL when none was leased).
    private static func leaseStatement(candidate: String) -> String {
        """
        WITH \(relaxed), \(live),
        mine AS (SELECT $4::bigint IN (SELECT key FROM live) AS held FROM relaxed),
        \(candidate),
        leased AS (
            UPDATE entry e SET lease_owner = $5, lease_expires_at = $6, lease_session = $4
            FROM candidate, mine
            WHERE e.id = candidate.id AND mine.held
            AND (NOT candidate.holds OR candidate.lease_owner = $5 OR candidate.lease_owner = ANY($7))
            RETURNING \(aliasedEntryColumns))
        SELECT mine.held, candidate.lease_owner, candidate.lease_expires_at, candidate.holds, leased.*
        FROM mine LEFT JOIN candidate ON true LEFT JOIN leased ON true
        """
    }

    /// Deletes a delivered entry (`$1`) this owner (`$2`) holds, or that was set aside meanwhile.
    enum DeleteDelivered: StatementText {
        static let sql = """
            WITH \(relaxed)
            DELETE FROM entry WHERE id = $1 AND (lease_owner = $2 OR (state = 'dead' AND lease_owner IS NULL))
            AND EXISTS (SELECT 1 FROM relaxed)
            """
    }

    /// Records a failed attempt on an entry (`$1`) this owner (`$2`) holds.
    enum RecordFailure: StatementText {
        static let sql = """
            WITH \(relaxed)
            UPDATE entry SET attempts = attempts + 1, next_attempt_at = $3, last_failure_kind = $4,
            last_status = $5, last_error = $6, last_response_excerpt = $7, lease_owner = NULL,
            lease_expires_at = NULL, lease_session = NULL
            WHERE id = $1 AND state = 'pending' AND lease_owner = $2 AND EXISTS (SELECT 1 FROM relaxed)
            """
    }

    /// Clears this owner's (`$2`) leases on entries (`$1`).
    enum GiveBack: StatementText {
        static let sql = """
            WITH \(relaxed)
            UPDATE entry SET lease_owner = NULL, lease_expires_at = NULL, lease_session = NULL
            WHERE id = ANY($1) AND lease_owner = $2 AND EXISTS (SELECT 1 FROM relaxed)
            """
    }
}
