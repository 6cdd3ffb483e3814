import GRDB

extension SQLiteQueueDatabase {
    /// The schema, as named migrations: an upgrade never drops queued data, and a file whose
    /// migrations this version does not know is refused (``BackgroundSyncError/Code/schemaTooNew``).
    static let migrator: DatabaseMigrator = {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE queue (
                    name TEXT PRIMARY KEY NOT NULL,
                    headPosition INTEGER NOT NULL DEFAULT 1,
                    tailPosition INTEGER NOT NULL DEFAULT 0,
                    pendingCount INTEGER NOT NULL DEFAULT 0,
                    deadCount INTEGER NOT NULL DEFAULT 0,
                    leaseOwner TEXT,
                    leaseExpiresAt DOUBLE
                );
                CREATE TABLE entry (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    queueName TEXT NOT NULL REFERENCES queue(name),
                    position INTEGER NOT NULL,
                    url TEXT NOT NULL,
                    method TEXT NOT NULL,
                    headers TEXT NOT NULL,
                    body BLOB,
                    settings TEXT,
                    timestamp DOUBLE NOT NULL,
                    metadata TEXT,
                    state TEXT NOT NULL DEFAULT 'pending',
                    attempts INTEGER NOT NULL DEFAULT 0,
                    nextAttemptAt DOUBLE,
                    leaseOwner TEXT,
                    leaseExpiresAt DOUBLE,
                    lastStatus INTEGER,
                    lastError TEXT,
                    lastResponseExcerpt BLOB,
                    idempotencyKey TEXT
                );
                CREATE INDEX entry_order ON entry(queueName, state, position);
                CREATE TABLE syncRegistration (
                    tag TEXT PRIMARY KEY NOT NULL,
                    registeredAt DOUBLE NOT NULL
                );
                CREATE TRIGGER entry_inserted AFTER INSERT ON entry BEGIN
                    UPDATE queue SET
                        pendingCount = pendingCount + (NEW.state = 'pending'),
                        deadCount = deadCount + (NEW.state = 'dead')
                    WHERE name = NEW.queueName;
                END;
                CREATE TRIGGER entry_deleted AFTER DELETE ON entry BEGIN
                    UPDATE queue SET
                        pendingCount = pendingCount - (OLD.state = 'pending'),
                        deadCount = deadCount - (OLD.state = 'dead')
                    WHERE name = OLD.queueName;
                END;
                CREATE TRIGGER entry_state_changed AFTER UPDATE OF state ON entry
                WHEN OLD.state <> NEW.state BEGIN
                    UPDATE queue SET
                        pendingCount = pendingCount + (NEW.state = 'pending') - (OLD.state = 'pending'),
                        deadCount = deadCount + (NEW.state = 'dead') - (OLD.state = 'dead')
                    WHERE name = NEW.queueName;
                END;
                """)
        }
        migrator.registerMigration("v2-sealed-secrets") { db in
            try db.execute(sql: "ALTER TABLE entry ADD COLUMN sealedSecrets BLOB")
        }
        // The insert trigger moves the queue's ends past each new entry, so a push reads the ends
        // once and writes the entry, instead of also updating the queue row itself. A version
        // that still updates the ends before inserting finds them already moved (the trigger's
        // `max`/`min` changes nothing then): the two can share a database.
        migrator.registerMigration("v3-ends-by-trigger") { db in
            try db.execute(sql: """
                DROP TRIGGER entry_inserted;
                CREATE TRIGGER entry_inserted AFTER INSERT ON entry BEGIN
                    UPDATE queue SET
                        pendingCount = pendingCount + (NEW.state = 'pending'),
                        deadCount = deadCount + (NEW.state = 'dead'),
                        headPosition = min(headPosition, NEW.position),
                        tailPosition = max(tailPosition, NEW.position)
                    WHERE name = NEW.queueName;
                END;
                """)
        }
        // The kind of the last failure, recorded with it. Failures recorded before have none
        // (`ReplayFailure.Kind.unrecorded`): it is not guessed from their text.
        migrator.registerMigration("v4-failure-kind") { db in
            try db.execute(sql: "ALTER TABLE entry ADD COLUMN lastFailureKind TEXT")
        }
        // The record key of an outbox's entries, by which a save finds the entry it replaces.
        migrator.registerMigration("v5-record-key") { db in
            try db.execute(sql: """
                ALTER TABLE entry ADD COLUMN recordKey TEXT;
                CREATE INDEX entry_record_key ON entry(queueName, recordKey, position) WHERE recordKey IS NOT NULL;
                """)
        }
        return migrator
    }()
}
