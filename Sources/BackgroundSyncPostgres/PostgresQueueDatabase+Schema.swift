import BackgroundSync
import Foundation
import PostgresNIO

extension PostgresQueueDatabase {
    /// A schema version: its name, recorded once applied, and its statements (`{s}.` is the
    /// schema-qualified prefix). Versions are applied in order and never edited once released.
    struct Migration {
        let version: String
        let statements: [String]
    }

    /// The schema, as named migrations. An upgrade never drops queued data.
    ///
    /// Positions come from two sequences, so that pushes to one queue do not wait for each other's
    /// commits: a push at the tail takes the next value of `tail_position`, one at the head the
    /// opposite of the next value of `head_position` (below every tail position and every earlier
    /// head push). Queue sizes are kept in `queue_count`, one row per queue and per shard of the
    /// pushing session (`pg_backend_pid() % 16`), for the same reason; a size is their sum.
    static let migrations: [Migration] = [
        Migration(version: "v1", statements: [
            "CREATE TABLE {s}.queue (name text PRIMARY KEY)",
            "CREATE SEQUENCE {s}.tail_position",
            "CREATE SEQUENCE {s}.head_position",
            """
            CREATE TABLE {s}.entry (
                id bigserial PRIMARY KEY,
                queue_name text NOT NULL,
                position bigint NOT NULL,
                url text NOT NULL,
                method text NOT NULL,
                headers text NOT NULL,
                body bytea,
                timeout_interval double precision NOT NULL,
                cache_policy bigint NOT NULL,
                handles_cookies boolean NOT NULL,
                allows_cellular boolean NOT NULL,
                main_document_url text,
                queued_at double precision NOT NULL,
                metadata text,
                state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
                attempts bigint NOT NULL DEFAULT 0,
                next_attempt_at double precision,
                lease_owner text,
                lease_expires_at double precision,
                lease_session bigint,
                last_failure_kind text,
                last_status bigint,
                last_error text,
                last_response_excerpt bytea,
                idempotency_key text,
                sealed_secrets bytea,
                record_key text
            )
            """,
            "CREATE INDEX entry_order ON {s}.entry (queue_name, state, position)",
            "CREATE INDEX entry_record_key ON {s}.entry (queue_name, record_key, position) WHERE record_key IS NOT NULL",
            """
            CREATE TABLE {s}.queue_count (
                queue_name text NOT NULL,
                shard integer NOT NULL,
                pending bigint NOT NULL DEFAULT 0,
                dead bigint NOT NULL DEFAULT 0,
                PRIMARY KEY (queue_name, shard)
            )
            """,
            "CREATE TABLE {s}.sync_registration (tag text PRIMARY KEY, registered_at double precision NOT NULL)",
            """
            CREATE FUNCTION {s}.count_entry() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
                session_shard integer := pg_backend_pid() % 16;
            BEGIN
                IF TG_OP IN ('DELETE', 'UPDATE') THEN
                    INSERT INTO {s}.queue_count AS c (queue_name, shard, pending, dead)
                    VALUES (OLD.queue_name, session_shard, -(OLD.state = 'pending')::integer, -(OLD.state = 'dead')::integer)
                    ON CONFLICT (queue_name, shard)
                    DO UPDATE SET pending = c.pending + EXCLUDED.pending, dead = c.dead + EXCLUDED.dead;
                END IF;
                IF TG_OP IN ('INSERT', 'UPDATE') THEN
                    INSERT INTO {s}.queue_count AS c (queue_name, shard, pending, dead)
                    VALUES (NEW.queue_name, session_shard, (NEW.state = 'pending')::integer, (NEW.state = 'dead')::integer)
                    ON CONFLICT (queue_name, shard)
                    DO UPDATE SET pending = c.pending + EXCLUDED.pending, dead = c.dead + EXCLUDED.dead;
                END IF;
                RETURN NULL;
            END
            $$
            """,
            "CREATE TRIGGER entry_inserted AFTER INSERT ON {s}.entry FOR EACH ROW EXECUTE FUNCTION {s}.count_entry()",
            "CREATE TRIGGER entry_deleted AFTER DELETE ON {s}.entry FOR EACH ROW EXECUTE FUNCTION {s}.count_entry()",
            """
            CREATE TRIGGER entry_state_changed AFTER UPDATE OF state ON {s}.entry FOR EACH ROW
            WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION {s}.count_entry()
            """,
        ]),
    ]

    /// A change that older versions of the library work with unchanged: applied under the
    /// migration lock like a migration, but known by what it creates, not by a version row, which
    /// older versions refuse. So an older instance still starts on the schema (a rollback, an
    /// instance restarted in the middle of a deploy).
    struct CompatibleChange {
        /// A query whose one Bool says whether the change is in place (`$1`: the schema-qualified
        /// name of the entry table).
        let isInPlace: String
        let statements: [String]
    }

    /// The compatible changes, applied after the migrations, in order.
    static let compatibleChanges: [CompatibleChange] = [
        // The hot pushes count their entries in their own statement (``countPushed(table:)``,
        // ``countOnePush(queue:table:)``), which costs the server less than the trigger's call,
        // and mark their rows `counted`. Any other insert, by this version or an older one, is
        // counted by the trigger.
        CompatibleChange(
            isInPlace: "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'counted' AND NOT attisdropped)",
            statements: [
                "ALTER TABLE {s}.entry ADD COLUMN counted boolean NOT NULL DEFAULT false",
                "DROP TRIGGER entry_inserted ON {s}.entry",
                """
                CREATE TRIGGER entry_inserted AFTER INSERT ON {s}.entry FOR EACH ROW WHEN (NOT NEW.counted)
                EXECUTE FUNCTION {s}.count_entry()
                """,
            ]),
    ]

    /// The clause of a push statement that counts the entries its `inserted` clause wrote (those
    /// rows are inserted with `counted` true, so the trigger leaves them), as the trigger would:
    /// in the pushing session's shard of each queue, queues in name order. `table` is the count
    /// table's name, schema-qualified or not. A push lists its `registration` clause after this
    /// one: PostgreSQL runs the clauses the main query does not read at the statement's end, the
    /// last listed first, so the tag's registration lock is taken before the count row's lock, as
    /// the count trigger did (a push waiting for a tag being unregistered holds no count row).
    static func countPushed(table: String) -> String {
        """
        counted AS (
            INSERT INTO \(table) AS c (queue_name, shard, pending, dead)
            SELECT queue_name, pg_backend_pid() % 16, count(*), 0 FROM inserted GROUP BY queue_name ORDER BY queue_name
            ON CONFLICT (queue_name, shard) DO UPDATE SET pending = c.pending + EXCLUDED.pending)
        """
    }

    /// The clause of a one-entry push statement that counts its entry, in queue `$queue`, as
    /// ``countPushed(table:)`` does, and listed before the registration clause as that one is (the
    /// same lock order). The shard's count row is updated in place when it exists, which costs the
    /// server less than an `INSERT … ON CONFLICT DO UPDATE` (that one also writes a tuple-lock
    /// record to the WAL); it is inserted only when the shard has no row for the queue yet
    /// (`counted`, which updates the row instead when another session of the shard inserted it
    /// meanwhile). One row, so no order to keep among count rows.
    static func countOnePush(queue: Int, table: String) -> String {
        """
        bumped AS (
            UPDATE \(table) SET pending = pending + 1 WHERE queue_name = $\(queue) AND shard = pg_backend_pid() % 16
            RETURNING 1),
        counted AS (
            INSERT INTO \(table) AS c (queue_name, shard, pending, dead)
            SELECT $\(queue), pg_backend_pid() % 16, 1, 0 WHERE NOT EXISTS (SELECT FROM bumped)
            ON CONFLICT (queue_name, shard) DO UPDATE SET pending = c.pending + EXCLUDED.pending)
        """
    }

    /// Brings the schema up to date, under a transaction-level advisory lock: instances that start
    /// together wait for the first one's migration, then find nothing to do. A schema already up to
    /// date is only read: a role that may use the tables but not create anything opens it.
    func migrate(_ connection: PostgresConnection) async throws {
        let known = Self.migrations.map(\.version)
        let exists = try await rows(connection, "SELECT to_regclass($1) IS NOT NULL", binds(prefix + "schema_migration"))
        if try exists.first?.decode(Bool.self) == true {
            let applied = try await rows(connection, sql("SELECT version FROM {s}.schema_migration"))
                .map { try $0.decode(String.self) }
            try refuseUnknown(applied, known: known)
            if Set(known).isSubset(of: applied), try await missingCompatibleChanges(connection).isEmpty { return }
        }
        try await command(connection, "BEGIN")
        do {
            try await rows(connection, "SELECT pg_advisory_xact_lock($1)", binds(Self.migrationLockKey(configuration.schema)))
            try await rows(connection, sql("CREATE SCHEMA IF NOT EXISTS \"\(configuration.schema)\""))
            try await rows(connection, sql("""
                CREATE TABLE IF NOT EXISTS {s}.schema_migration (
                    version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())
                """))
            var applied: [String] = []
            for row in try await rows(connection, sql("SELECT version FROM {s}.schema_migration")) {
                applied.append(try row.decode(String.self))
            }
            try refuseUnknown(applied, known: known)
            for migration in Self.migrations where !applied.contains(migration.version) {
                for statement in migration.statements { try await rows(connection, sql(statement)) }
                try await rows(connection, sql("INSERT INTO {s}.schema_migration(version) VALUES ($1)"), binds(migration.version))
                logger.info("migrated the PostgreSQL store", metadata: ["store": "\(identity)", "version": "\(migration.version)"])
            }
            for change in try await missingCompatibleChanges(connection) {
                for statement in change.statements { try await rows(connection, sql(statement)) }
            }
            try await command(connection, "COMMIT")
        } catch {
            try? await command(connection, "ROLLBACK")
            throw error
        }
    }

    /// The compatible changes not in place yet.
    private func missingCompatibleChanges(_ connection: PostgresConnection) async throws -> [CompatibleChange] {
        var missing: [CompatibleChange] = []
        for change in Self.compatibleChanges {
            let inPlace = try await rows(connection, change.isInPlace, binds(prefix + "entry"))
            if try inPlace.first?.decode(Bool.self) != true { missing.append(change) }
        }
        return missing
    }

    /// Refuses a schema with versions this library does not know.
    private func refuseUnknown(_ applied: [String], known: [String]) throws {
        let unknown = applied.filter { !known.contains($0) }
        guard unknown.isEmpty else {
            throw BackgroundSyncError(
                .schemaTooNew,
                "the PostgreSQL store \(identity) was written by a newer version of the library (schema \(unknown.sorted().joined(separator: ", "))): upgrade this program")
        }
    }

    /// The advisory lock key of a schema's migrations: a stable hash of its name (the same in
    /// every process), in a range apart from session keys' only by chance, which is harmless.
    static func migrationLockKey(_ schema: String) -> Int64 {
        Int64(bitPattern: stableHash("background-sync migrations " + schema))
    }

    /// FNV-1a, 64 bits: the same in every process and on every host.
    static func stableHash(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return hash
    }
}

/// A value bound to a statement parameter.
protocol Bindable: Sendable {
    func bind(to bindings: inout PostgresBindings)
}

extension Bindable where Self: PostgresDynamicTypeEncodable {
    func bind(to bindings: inout PostgresBindings) { bindings.append(self) }
}

extension String: Bindable {}
extension Int64: Bindable {}
extension Double: Bindable {}
extension Bool: Bindable {}
extension Array: Bindable where Element: Bindable & PostgresArrayEncodable & PostgresNonThrowingEncodable {}

extension Data: Bindable {
    func bind(to bindings: inout PostgresBindings) { try! bindings.append(self) }
}

extension Optional: Bindable where Wrapped: Bindable {
    func bind(to bindings: inout PostgresBindings) {
        switch self {
        case .some(let value): value.bind(to: &bindings)
        // An untyped NULL: a parameter that is only compared with NULL needs a cast in the SQL.
        case .none: bindings.appendNull()
        }
    }
}

/// Bindings for a statement's parameters, in order (`$1`, `$2`…).
func binds(_ values: any Bindable...) -> PostgresBindings {
    binds(values)
}

/// Bindings for a statement's parameters, in order.
func binds(_ values: [any Bindable]) -> PostgresBindings {
    var bindings = PostgresBindings(capacity: values.count)
    for value in values { value.bind(to: &bindings) }
    return bindings
}
