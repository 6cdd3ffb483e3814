@testable import BackgroundSync
import BackgroundSyncTesting
import ChildProcesses
import Foundation
import GRDB
import Testing

@Suite("SQLiteQueueDatabase")
struct SQLiteQueueDatabaseTests {
    private func temporaryFolder() throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        return folder
    }

    /// GRDB sets a pool's writer to `synchronous=NORMAL` when it enables WAL; pushes must commit
    /// with the configured mode (FULL: synced before the call returns), while replay bookkeeping
    /// commits with NORMAL.
    @Test(arguments: [(SQLiteQueueDatabase.Configuration.Synchronous.full, 2), (.normal, 1)])
    func pushesCommitWithTheConfiguredModeAndReplayBookkeepingWithNormal(
        mode: SQLiteQueueDatabase.Configuration.Synchronous, expected: Int
    ) async throws {
        let database = try SQLiteQueueDatabase.temporary(configuration: .init(synchronous: mode))
        func writerSetting() async throws -> Int? {
            // Read on the writer connection, between transactions, as the next commit would see it.
            try await database.writer.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") }
        }
        let entry = UnidentifiedQueueStoreEntry(requestData: .init(url: "https://example.com/a", method: "POST"))
        _ = try await database.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
        #expect(try await writerSetting() == expected)

        let claims = database.claims(
            queueName: "q", order: .ordered, owner: .current(), leaseDuration: .seconds(60), clock: SystemWallClock())
        guard case .claimed(let claimed) = try await claims.next() else { Issue.record("nothing claimed"); return }
        #expect(try await writerSetting() == 1, "a lease is bookkeeping")
        try await claims.complete(claimed)
        try await claims.finish()
        #expect(try await writerSetting() == 1, "deleting a delivered entry is bookkeeping")
        #expect(try await database.countEntries(queueName: "q", state: .pending) == 0)

        _ = try await database.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
        #expect(try await writerSetting() == expected, "the next push is durable again")
        _ = try await database.requeueDeadEntries(queueName: "q", ids: nil)
        #expect(try await writerSetting() == expected, "user actions are durable")
    }

    @Test func aNewFileIsPrivateToItsOwner() async throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("nested/queue.sqlite").path
        let database = try SQLiteQueueDatabase(path: path)
        try await QueueStore(queueName: "q", database: database).pushEntry(
            UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/", method: "POST")))
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let walMode = try FileManager.default.attributesOfItem(atPath: path + "-wal")[.posixPermissions] as? Int
        #expect(walMode == 0o600)
    }

    @Test func aFileThatIsNotADatabaseIsReportedAndLeftUntouched() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("notes.txt").path
        let content = Data(String(repeating: "these are not the bytes of a database\n", count: 200).utf8)
        try content.write(to: URL(fileURLWithPath: path))
        let error = try #require(throws: BackgroundSyncError.self) { try SQLiteQueueDatabase(path: path) }
        #expect(error.code == .notADatabase)
        #expect(error.description.contains(path))
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == content)
    }

    @Test func aDirectoryIsReported() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let error = try #require(throws: BackgroundSyncError.self) { try SQLiteQueueDatabase(path: folder.path) }
        #expect(error.code == .notADatabase)
        #expect(error.description.contains("directory"))
    }

    @Test func aDatabaseFromANewerSchemaIsReportedAndLeftUntouched() async throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("q.sqlite").path
        do {
            let database = try SQLiteQueueDatabase(path: path)
            try await QueueStore(queueName: "q", database: database).pushEntry(
                UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/", method: "POST")))
        }
        try sqlite(path, "INSERT INTO grdb_migrations VALUES ('v99-from-the-future')")
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        let error = try #require(throws: BackgroundSyncError.self) { try SQLiteQueueDatabase(path: path) }
        #expect(error.code == .schemaTooNew)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
    }

    /// Since v3 the insert trigger moves the queue's ends. A database written before it upgrades
    /// in place, and a writer of the previous version (which moves the ends itself, then inserts)
    /// can still share it: no position is taken twice and the counts stay right.
    @Test func queueEndsStayRightAcrossTheV3UpgradeAndWithAPreviousVersionWriter() async throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("q.sqlite").path
        func entry(_ name: String) -> UnidentifiedQueueStoreEntry {
            UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/\(name)", method: "POST"))
        }
        // The previous version's statements for one push and one unshift.
        let previousPush = """
            UPDATE queue SET tailPosition = tailPosition + 1 WHERE name = 'q';
            INSERT INTO entry(queueName, position, url, method, headers, timestamp)
                SELECT 'q', tailPosition, 'https://a.example/old-tail', 'POST', '{}', 0 FROM queue WHERE name = 'q';
            """
        let previousUnshift = """
            UPDATE queue SET headPosition = headPosition - 1 WHERE name = 'q';
            INSERT INTO entry(queueName, position, url, method, headers, timestamp)
                SELECT 'q', headPosition, 'https://a.example/old-head', 'POST', '{}', 0 FROM queue WHERE name = 'q';
            """
        do {
            let store = QueueStore(queueName: "q", database: try SQLiteQueueDatabase(path: path))
            _ = try await store.pushEntry(entry("a"))
        }
        // Back to the v2 schema (its trigger only counts), with an entry written the v2 way.
        try sqlite(path, """
            DELETE FROM grdb_migrations WHERE identifier = 'v3-ends-by-trigger';
            DROP TRIGGER entry_inserted;
            CREATE TRIGGER entry_inserted AFTER INSERT ON entry BEGIN
                UPDATE queue SET pendingCount = pendingCount + (NEW.state = 'pending'),
                    deadCount = deadCount + (NEW.state = 'dead') WHERE name = NEW.queueName;
            END;
            \(previousPush)
            """)
        do {
            // Opening upgrades; then this version and a previous-version writer take turns.
            let database = try SQLiteQueueDatabase(path: path)
            let store = QueueStore(queueName: "q", database: database)
            _ = try await store.pushEntry(entry("b"))
            _ = try await store.unshiftEntry(entry("z"))
            try sqlite(path, previousPush + previousUnshift)
            async let c = store.pushEntry(entry("c"))
            async let d = store.pushEntry(entry("d"))
            async let y = store.unshiftEntry(entry("y"))
            _ = try await (c, d, y)
            let urls = try await store.getAll().map { $0.requestData.url.replacingOccurrences(of: "https://a.example/", with: "") }
            #expect(urls.count == 9)
            #expect(urls.sorted() == ["a", "b", "c", "d", "old-head", "old-tail", "old-tail", "y", "z"])
            #expect(Array(urls.prefix(3)) == ["y", "old-head", "z"])
            #expect(Array(urls[3...6]) == ["a", "old-tail", "b", "old-tail"])
            #expect(Array(urls.suffix(2)).sorted() == ["c", "d"])
            #expect(try await store.size() == 9)
            let (positions, head, tail) = try await database.writer.read { db in
                (try Int64.fetchAll(db, sql: "SELECT position FROM entry ORDER BY position"),
                 try Int64.fetchOne(db, sql: "SELECT headPosition FROM queue WHERE name = 'q'"),
                 try Int64.fetchOne(db, sql: "SELECT tailPosition FROM queue WHERE name = 'q'"))
            }
            #expect(Set(positions).count == positions.count, "no position taken twice")
            #expect(head == positions.first && tail == positions.last)
        }
    }

    /// Ordered, and concurrent (where the claim scan goes on past a row it set aside).
    @Test(arguments: [1, 4])
    func corruptRowsAreSetAsideByReplayNotLostAndNotBlocking(concurrency: Int) async throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("q.sqlite").path
        let server = try RecordingServer()
        do {
            let store = QueueStore(queueName: "q", database: try SQLiteQueueDatabase(path: path))
            for body in ["a", "b", "c", "d", "e"] {
                try await store.pushEntry(UnidentifiedQueueStoreEntry(
                    requestData: .init(url: server.url.absoluteString, method: "POST", body: Data(body.utf8))))
            }
        }
        try sqlite(path, "UPDATE entry SET headers = 'not json' WHERE id IN (SELECT id FROM entry ORDER BY id LIMIT 1)")
        try sqlite(path, "UPDATE entry SET metadata = '[1]' WHERE id IN (SELECT id FROM entry ORDER BY id LIMIT 1 OFFSET 2)")
        let database = try SQLiteQueueDatabase(path: path)
        let queue = try Queue(name: "q", options: QueueOptions(maxConcurrentReplays: concurrency), database: database)
        let summary = try await queue.replayRequests()
        #expect(summary.delivered == 3)
        #expect(server.bodies.sorted() == ["b", "d", "e"])
        if concurrency == 1 { #expect(server.bodies == ["b", "d", "e"]) }
        #expect(try await database.countEntries(queueName: "q", state: .dead) == 2)
        #expect(try await database.countEntries(queueName: "q", state: .pending) == 0)
        let error = try await #require(throws: BackgroundSyncError.self) { try await queue.deadLetters() }
        #expect(error.code == .storage)
        #expect(error.entryID != nil)
        #expect(error.description.contains("cannot be read"))
    }

    @Test func aRowWithAWrongColumnTypeIsAnErrorNotACrash() async throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("q.sqlite").path
        let server = try RecordingServer()
        do {
            let store = QueueStore(queueName: "q", database: try SQLiteQueueDatabase(path: path))
            for body in ["a", "b"] {
                try await store.pushEntry(UnidentifiedQueueStoreEntry(
                    requestData: .init(url: server.url.absoluteString, method: "POST", body: Data(body.utf8))))
            }
        }
        try sqlite(path, "UPDATE entry SET attempts = 'many', timestamp = 'yesterday' WHERE id = (SELECT min(id) FROM entry)")
        let database = try SQLiteQueueDatabase(path: path)
        let error = try await #require(throws: BackgroundSyncError.self) {
            try await database.entries(queueName: "q", state: .pending)
        }
        #expect(error.entryID == 1)
        #expect(error.description.contains("column timestamp holds \"yesterday\""), "the message names the column: \(error)")
        let queue = try Queue(name: "q", database: database)
        #expect(try await queue.replayRequests().delivered == 1)
        #expect(server.bodies == ["b"])
        #expect(try await database.countEntries(queueName: "q", state: .dead) == 1, "set aside, not lost")
    }

    /// Deletions, leases and give-backs by id go in statements of a few dozen ids: more than one
    /// statement's worth, repeated ids and ids of no entry are each counted once or not at all.
    @Test func changesByIdSpanSeveralStatements() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let store = QueueStore(queueName: "q", database: database)
        var ids: [Int64] = []
        for index in 0..<75 {
            ids.append(try await store.pushEntry(UnidentifiedQueueStoreEntry(
                requestData: .init(url: "https://a.example/\(index)", method: "POST"))))
        }
        // One replayer leases 70 entries ahead and gives them all back at its end.
        let clock = ManualWallClock()
        let first = database.claims(
            queueName: "q", order: .concurrent(maxInFlight: 35), owner: .current(), leaseDuration: .seconds(300), clock: clock)
        guard case .claimed = try await first.next() else {
            Issue.record("the first replayer takes an entry")
            return
        }
        try await first.finish()
        // Another one finds every entry free.
        let second = database.claims(
            queueName: "q", order: .concurrent(maxInFlight: 40), owner: otherReplayer, leaseDuration: .seconds(300), clock: clock)
        var taken: Set<Int64> = []
        while case .claimed(let entry) = try await second.next() { taken.insert(entry.id) }
        #expect(taken == Set(ids))
        try await second.finish()
        let deleted = try await database.deleteEntries(ids: Array(ids.prefix(70)) + [ids[0], ids[69], 999_999])
        #expect(deleted == 70)
        #expect(try await store.getAll().map(\.id) == Array(ids.suffix(5)))
        #expect(try await store.size() == 5, "the count kept by the trigger")
    }

    /// Entries whose settings alternate read back each with its own (the last settings read are
    /// kept for the next entry).
    @Test func settingsReadBackEntryByEntry() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let store = QueueStore(queueName: "q", database: database)
        let timeouts: [Double] = [5, 5, 7, 60, 5, 7]
        for timeout in timeouts {
            try await store.pushEntry(UnidentifiedQueueStoreEntry(
                requestData: .init(url: "https://a.example/", method: "POST", timeoutInterval: timeout)))
        }
        #expect(try await store.getAll().map(\.requestData.timeoutInterval) == timeouts)
    }

    @Test func inMemoryDatabasesWork() async throws {
        let database = try SQLiteQueueDatabase.inMemory()
        let store = QueueStore(queueName: "q", database: database)
        try await store.pushEntry(UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/", method: "POST")))
        #expect(try await store.size() == 1)
    }

    /// A close removes the files a writer made; a read-only open by the file's owner reads through
    /// SQLite's WAL (another user reads a snapshot: `SharedFileTests`), and refuses writes.
    @Test func closeRemovesTheWALAndReadOnlyOpeningRefusesWrites() async throws {
        let folder = try temporaryFolder()
        let path = folder.appendingPathComponent("queue.sqlite").path
        let writer = try SQLiteQueueDatabase(path: path)
        let entry = UnidentifiedQueueStoreEntry(requestData: .init(url: "https://example.com/a", method: "POST"))
        _ = try await writer.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
        #expect(FileManager.default.fileExists(atPath: path + "-wal"))
        try writer.close()
        await #expect(throws: BackgroundSyncError.self) { try await writer.queueNames() }
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() == ["queue.sqlite", "queue.sqlite.reserve"])

        #expect(!SQLiteQueueDatabase.readsAsSnapshot(path), "the owner reads through SQLite's locks")
        let reader = try SQLiteQueueDatabase(path: path, configuration: .init(readOnly: true))
        #expect(try await reader.queueNames() == ["q"])
        #expect(try await reader.countEntries(queueName: "q", state: .pending) == 1)
        await #expect(throws: (any Error).self) {
            _ = try await reader.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
        }
        try reader.close()
    }

    /// Values of the wrong type in a file salvage reads are counted or set aside, never a crash,
    /// and a failed row does not stop the others.
    @Test func salvageSurvivesGarbledValues() async throws {
        let folder = try temporaryFolder()
        let path = folder.appendingPathComponent("queue.sqlite").path
        let database = try SQLiteQueueDatabase(path: path)
        for index in 1...3 {
            let entry = UnidentifiedQueueStoreEntry(requestData: .init(url: "https://example.com/\(index)", method: "POST"))
            _ = try await database.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: "sync-q")
        }
        try database.close()
        try sqlite(path, """
            UPDATE queue SET headPosition = 'abc', tailPosition = x'00';
            UPDATE syncRegistration SET registeredAt = 'never';
            UPDATE entry SET state = 'zz' WHERE id = 2;
            UPDATE entry SET queueName = x'FF' WHERE id = 3;
            """)
        let destination = folder.appendingPathComponent("salvaged.sqlite").path
        let report = try SQLiteQueueDatabase.salvage(from: path, to: destination)
        #expect(report.salvaged == 2)
        #expect(report.setAside == 1)
        #expect(report.unreadable == 1, "the entry whose queue name is not text cannot be written")
        #expect(!FileManager.default.fileExists(atPath: destination + ".partial"))
        let copy = try SQLiteQueueDatabase(path: destination)
        #expect(try await copy.entries(queueName: "q", state: .pending).map(\.id) == [1])
        #expect(try await copy.entries(queueName: "q", state: .dead).map(\.id) == [2])
        // New ids go on after the damaged file's last one.
        let next = try await copy.pushEntry(
            UnidentifiedQueueStoreEntry(requestData: .init(url: "https://example.com/4", method: "POST")),
            queueName: "q", at: .tail, registeringSyncTag: nil)
        #expect(next.id == 4)
        try copy.close()
    }
}

