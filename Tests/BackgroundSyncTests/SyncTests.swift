@testable import BackgroundSync
import BackgroundSyncTesting
import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("SyncManager and sync events")
struct SyncTests {
    @Test func pushingRegistersTheQueueTagAndASuccessfulSyncConsumesIt() async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        let queue = try Queue(name: uniqueQueueName(), database: database)
        #expect(try await queue.syncManager.getTags() == [])
        try await queue.pushRequest(postRequest(server.url, body: "x"))
        #expect(try await queue.syncManager.getTags() == [queue.syncTag])

        try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag))
        #expect(server.bodies == ["x"])
        #expect(try await queue.syncManager.getTags() == [])
    }

    @Test func aFailedSyncKeepsTheRegistrationUnlessItWasTheLastChance() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("down", status: 503)) }
        let database = try SQLiteQueueDatabase.temporary()
        // A custom sync handler: Workbox's rule as it is (a queue's own replay keeps the
        // registration while entries are left, see below).
        let url = server.url
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(onSync: { try await $0.replayRequests() }), database: database)
        try await queue.pushRequest(postRequest(url, body: "x"))

        await #expect(throws: BackgroundSyncError.self) {
            try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag))
        }
        #expect(try await queue.syncManager.getTags() == [queue.syncTag])
        await #expect(throws: BackgroundSyncError.self) {
            try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag, lastChance: true))
        }
        #expect(try await queue.syncManager.getTags() == [])
        #expect(try await queue.size() == 1, "a dropped registration never drops the entries")
    }

    /// Another process pushes just as a queue's sync ends: it finds the tag registered, so it
    /// registers nothing, and the sync's success must not take the registration from its entry.
    @Test func anotherProcessPushingAsASyncEndsKeepsTheRegistration() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        // The other process: a handle of its own on the file, pushing without this process knowing.
        let other = try SQLiteQueueDatabase(path: database.path)
        let manager = SyncManager(database: database)
        let (name, tag) = ("q-\(UUID().uuidString)", "sync-q")
        let entry = UnidentifiedQueueStoreEntry(
            requestData: StorableRequest.RequestData(url: "http://127.0.0.1:9/x", method: "POST", body: Data("late".utf8)))
        let pushes = Box(0)
        // The queue's sync: its replay found nothing left as the other process's push came in.
        try manager.addHandler(tag: tag, token: UUID(), queueName: name) { _ in
            if pushes.withLock({ $0 += 1; return $0 }) == 1 {
                _ = try await other.pushEntry(entry, queueName: name, at: .tail, registeringSyncTag: tag)
            }
        }
        try await manager.register(tag)
        try await manager.dispatch(SyncEvent(tag: tag))
        #expect(try await manager.getTags() == [tag], "the late entry keeps the registration")
        // Once the queue is empty, a success consumes it.
        _ = try await database.deleteEntries(queueName: name, state: nil)
        try await manager.dispatch(SyncEvent(tag: tag))
        #expect(try await manager.getTags() == [])
    }

    /// A last chance that fails sets the head aside; the entries behind it keep the registration.
    @Test func aLastChanceThatFailsKeepsTheRegistrationForTheEntriesLeft() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("down", status: 503)) }
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(retryPolicy: .init(maxAttempts: 2)),
            database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "head"))
        try await queue.pushRequest(postRequest(server.url, body: "behind"))
        await #expect(throws: BackgroundSyncError.self) {
            try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag))
        }
        // The head's second and last attempt fails: it is set aside, and "behind" fails once.
        await #expect(throws: BackgroundSyncError.self) {
            try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag, lastChance: true))
        }
        #expect(try await queue.deadLetters().count == 1)
        #expect(try await queue.size() == 1)
        #expect(try await queue.syncManager.getTags() == [queue.syncTag])
    }

    @Test func entriesAddedDuringASuccessfulSyncRegisterAgain() async throws {
        let server = try RecordingServer()
        let added = Box(false)
        let url = server.url
        let options = QueueOptions(onSync: { queue in
            try await queue.replayRequests()
            if !added.withLock({ let was = $0; $0 = true; return was }) {
                try await queue.pushRequest(postRequest(url, body: "during"))
            }
        })
        let queue = try Queue(name: uniqueQueueName(), options: options, database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(url, body: "before"))
        try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag))
        #expect(server.bodies == ["before"])
        #expect(try await queue.syncManager.getTags() == [queue.syncTag])

        try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag))
        #expect(server.bodies == ["before", "during"])
        #expect(try await queue.syncManager.getTags() == [])
    }

    @Test(arguments: [false, true])
    func entriesAddedDuringAFailedSyncRegisterAgainOnlyOnTheLastChance(lastChance: Bool) async throws {
        let options = QueueOptions(onSync: { queue in
            try await queue.pushRequest(postRequest(URL(string: "https://example.com/x")!, body: "during"))
            throw URLError(.notConnectedToInternet)
        })
        let queue = try Queue(name: uniqueQueueName(), options: options, database: try SQLiteQueueDatabase.temporary())
        await queue.registerSync()
        await #expect(throws: URLError.self) {
            try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag, lastChance: lastChance))
        }
        // Not the last chance: the registration is kept anyway. Last chance: registered again.
        #expect(try await queue.syncManager.getTags() == [queue.syncTag])
        #expect(try await queue.size() == 1)
    }

    @Test func aLastChanceFailureWithoutNewEntriesDropsTheRegistration() async throws {
        let options = QueueOptions(onSync: { _ in throw URLError(.timedOut) })
        let queue = try Queue(name: uniqueQueueName(), options: options, database: try SQLiteQueueDatabase.temporary())
        await queue.registerSync()
        await #expect(throws: URLError.self) {
            try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag, lastChance: true))
        }
        #expect(try await queue.syncManager.getTags() == [])
    }

    @Test func eventsOfOtherTagsDoNotReachTheQueueAndUnknownTagsAreReported() async throws {
        let calls = Box(0)
        let database = try SQLiteQueueDatabase.temporary()
        let options = QueueOptions(onSync: { _ in calls.withLock { $0 += 1 } })
        let a = try Queue(name: uniqueQueueName("a"), options: options, database: database)
        let b = try Queue(name: uniqueQueueName("b"), database: database)
        #expect(a.syncManager === b.syncManager)
        try await b.syncManager.dispatch(SyncEvent(tag: b.syncTag))
        #expect(calls.current == 0)
        try await a.syncManager.dispatch(SyncEvent(tag: a.syncTag))
        #expect(calls.current == 1)

        let error = try await #require(throws: BackgroundSyncError.self) {
            try await a.syncManager.dispatch(SyncEvent(tag: "background-sync:nobody"))
        }
        #expect(error.code == .unknownSyncTag)
        #expect(error.description.contains("nobody"))
    }

    @Test func forceSyncFallbackRunsOnSyncOnceAtCreation() async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        let name = uniqueQueueName()
        do {
            let writer = try Queue(name: name, database: database)
            try await writer.pushRequest(postRequest(server.url, body: "from last run"))
        }
        let calls = Box(0)
        let queue = try Queue(
            name: name,
            options: QueueOptions(forceSyncFallback: true, onSync: { queue in
                calls.withLock { $0 += 1 }
                try await queue.replayRequests()
            }),
            database: database)
        await queue.runFallbackSync()
        #expect(calls.current == 1)
        #expect(server.bodies == ["from last run"])
        #expect(try await queue.size() == 0)
    }

    @Test func registrationsArePersistedInTheDatabase() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("db.sqlite").path
        do {
            let manager = SyncManager(database: try SQLiteQueueDatabase(path: path))
            try await manager.register("background-sync:a")
            try await manager.register("background-sync:b")
            try await manager.register("background-sync:a")
        }
        let reopened = SyncManager(database: try SQLiteQueueDatabase(path: path))
        #expect(try await reopened.getTags() == ["background-sync:a", "background-sync:b"])

        let memory = SyncManager()
        try await memory.register("t")
        #expect(try await memory.getTags() == ["t"])
    }
}
