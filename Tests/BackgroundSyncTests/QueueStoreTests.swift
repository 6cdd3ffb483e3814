import BackgroundSync
import BackgroundSyncTesting
import Foundation
import Testing

@Suite("QueueStore")
struct QueueStoreTests {
    private func entry(_ path: String, metadata: [String: String]? = nil) -> UnidentifiedQueueStoreEntry {
        UnidentifiedQueueStoreEntry(
            requestData: .init(url: "https://example.com/\(path)", method: "POST", body: Data(path.utf8)),
            timestamp: Date(timeIntervalSince1970: 1_700_000_000),
            metadata: metadata)
    }

    private func paths(_ entries: [QueueStoreEntry]) -> [String] {
        entries.map { String($0.requestData.url.split(separator: "/").last!) }
    }

    @Test func pushAndUnshiftOrderIsPerQueue() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let a = QueueStore(queueName: "a", database: database)
        let b = QueueStore(queueName: "b", database: database)
        try await a.pushEntry(entry("a1"))
        try await b.pushEntry(entry("b1"))
        try await a.pushEntry(entry("a2"))
        try await b.unshiftEntry(entry("b0"))
        try await a.unshiftEntry(entry("a0"))
        try await b.pushEntry(entry("b2"))
        try await a.unshiftEntry(entry("a-1"))

        #expect(paths(try await a.getAll()) == ["a-1", "a0", "a1", "a2"])
        #expect(paths(try await b.getAll()) == ["b0", "b1", "b2"])
        #expect(try await a.size() == 4)
        #expect(try await b.size() == 3)
    }

    @Test func shiftAndPopRemoveFromEitherEnd() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let store = QueueStore(queueName: "q", database: database)
        let other = QueueStore(queueName: "other", database: database)
        try await other.pushEntry(entry("x"))
        for path in ["1", "2", "3"] { try await store.pushEntry(entry(path, metadata: ["n": path])) }

        let first = try #require(try await store.shiftEntry())
        #expect(paths([first]) == ["1"])
        #expect(first.metadata == ["n": "1"])
        #expect(first.queueName == "q")
        #expect(first.timestamp == Date(timeIntervalSince1970: 1_700_000_000))
        let last = try #require(try await store.popEntry())
        #expect(paths([last]) == ["3"])
        #expect(paths(try await store.getAll()) == ["2"])
        _ = try await store.shiftEntry()
        #expect(try await store.shiftEntry() == nil)
        #expect(try await store.popEntry() == nil)
        #expect(try await store.size() == 0)
        #expect(try await other.size() == 1)
    }

    @Test func deleteEntryRemovesOnlyThatEntry() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let store = QueueStore(queueName: "q", database: database)
        let id1 = try await store.pushEntry(entry("1"))
        try await store.pushEntry(entry("2"))
        try await store.deleteEntry(id: id1)
        #expect(paths(try await store.getAll()) == ["2"])
        #expect(try await store.size() == 1)
    }

    @Test func entriesSurviveReopeningTheFile() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("q.sqlite").path
        do {
            let database = try SQLiteQueueDatabase(path: path)
            try await QueueStore(queueName: "q", database: database).pushEntry(entry("kept", metadata: ["k": "v"]))
        }
        let reopened = try SQLiteQueueDatabase(path: path)
        let entries = try await QueueStore(queueName: "q", database: reopened).getAll()
        #expect(paths(entries) == ["kept"])
        #expect(entries.first?.metadata == ["k": "v"])
        #expect(entries.first?.requestData.body == Data("kept".utf8))
    }
}
