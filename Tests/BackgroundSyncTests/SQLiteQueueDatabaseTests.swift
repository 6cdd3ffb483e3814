@testable import BackgroundSync
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

    private func sqlite(_ path: String, _ sql: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // Waits for a lock the database being closed may still hold (its last checkpoint).
        process.arguments = ["sqlite3", "-cmd", ".timeout 10000", path, sql]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
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
        _ = try await database.insertEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
        #expect(try await writerSetting() == expected)

        let claim = try await database.claimHead(queueName: "q", owner: .current(), leaseDuration: .seconds(60), now: Date())
        guard case .claimed(let claimed) = claim else { Issue.record("nothing claimed"); return }
        #expect(try await writerSetting() == 1, "a lease is bookkeeping")
        try await database.completeClaim(id: claimed.id, owner: .current())
        #expect(try await writerSetting() == 1, "deleting a delivered entry is bookkeeping")

        _ = try await database.insertEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
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
        let queue = try Queue(name: "q", database: database)
        #expect(try await queue.replayRequests().delivered == 1)
        #expect(server.bodies == ["b"])
        #expect(try await database.countEntries(queueName: "q", state: .dead) == 1, "set aside, not lost")
    }

    @Test func inMemoryDatabasesWork() async throws {
        let database = try SQLiteQueueDatabase.inMemory()
        let store = QueueStore(queueName: "q", database: database)
        try await store.pushEntry(UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/", method: "POST")))
        #expect(try await store.size() == 1)
    }
}
