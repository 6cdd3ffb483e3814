import BackgroundSync
@_spi(Testing) import BackgroundSyncPostgres
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import PostgresTestServer
import Testing

/// Pushes on one instance of a PostgreSQL store wake a service on another, without polling.
@Suite(
    "PostgreSQL wake-ups", .timeLimit(.minutes(2)),
    .enabled(if: PostgresTestServer.unavailableReason == nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresWakeUpTests {
    @Test func aPushOnAnotherInstanceWakesAnIdleService() async throws {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: postgres.url + "?sslmode=disable")
        configuration.schema = uniqueSchema("wake")
        let stores = RunningStores()
        let worker = try await stores.open(configuration)
        let producer = try await stores.open(configuration)
        let server = try RecordingServer()
        // The queue exists before the service starts; it then waits with no poll and no timer due.
        let queue = try Queue(name: "orders", database: worker)
        let service = SyncService(queues: [queue], configuration: .init(connectivity: nil, pollInterval: nil))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await service.run() }
            // The producer's push goes straight to its instance (no SyncManager of this process
            // hears of it): only the store's notification can wake the service.
            let request = try StorableRequest.fromRequest({
                var request = URLRequest(url: server.url)
                request.httpMethod = "POST"
                request.httpBody = Data("from another host".utf8)
                return request
            }())
            // Pushed after the service's start-up round (which would find the entry by itself):
            // the push is then one the service can only learn of from the store.
            try await Task.sleep(for: .milliseconds(300))
            _ = try await producer.pushEntry(
                UnidentifiedQueueStoreEntry(requestData: request.toObject()), queueName: "orders", at: .tail,
                registeringSyncTag: queue.syncTag)
            var waited = 0
            while server.bodies.isEmpty && waited < 1_000 {
                try await Task.sleep(for: .milliseconds(10))
                waited += 1
            }
            group.cancelAll()
        }
        await stores.stopAll()
        #expect(server.bodies == ["from another host"])
    }

    /// Back-to-back pushes are announced in rounds at least ``PostgresQueueDatabase/announcementInterval``
    /// apart, not one notification per push, and the last of them too: an idle service on another
    /// instance delivers every entry, and nothing is left unannounced.
    @Test func aBurstOfPushesIsAnnouncedInFewRoundsAndCompletely() async throws {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: postgres.url + "?sslmode=disable")
        configuration.schema = uniqueSchema("wake")
        let stores = RunningStores()
        let worker = try await stores.open(configuration)
        let producer = try await stores.open(configuration)
        let server = try RecordingServer()
        let queue = try Queue(name: "burst", database: worker)
        let service = SyncService(queues: [queue], configuration: .init(connectivity: nil, pollInterval: nil))
        let count = 40
        var (elapsed, rounds) = (Duration.zero, 0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await service.run() }
            try await Task.sleep(for: .milliseconds(300))
            let before = producer.announcerProgress.rounds
            let start = ContinuousClock.now
            for index in 0..<count {
                var request = URLRequest(url: server.url)
                request.httpMethod = "POST"
                request.httpBody = Data("\(index)".utf8)
                _ = try await producer.pushEntry(
                    UnidentifiedQueueStoreEntry(requestData: try StorableRequest.fromRequest(request).toObject()),
                    queueName: "burst", at: .tail, registeringSyncTag: queue.syncTag)
            }
            elapsed = ContinuousClock.now - start
            var waited = 0
            while server.bodies.count < count || producer.announcerProgress.pending, waited < 1_000 {
                try await Task.sleep(for: .milliseconds(10))
                waited += 1
            }
            rounds = producer.announcerProgress.rounds - before
            group.cancelAll()
        }
        await stores.stopAll()
        #expect(server.bodies == (0..<count).map { "\($0)" })
        #expect(!producer.announcerProgress.pending, "every push announced")
        // The first round goes out at once, each later one an interval after the one before; the
        // last may come an interval after the last push.
        let most = Int(elapsed / PostgresQueueDatabase.announcementInterval) + 2
        #expect((1...most).contains(rounds), "\(rounds) rounds for \(count) pushes in \(elapsed)")
    }

    /// `bgsync enqueue` pushes and stops at once: its push still wakes a service that does not poll.
    @Test func aPushByAShortLivedBgsyncWakesAnIdleService() async throws {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        let schema = uniqueSchema("wake")
        var configuration = try PostgresQueueDatabase.Configuration(url: postgres.url + "?sslmode=disable")
        configuration.schema = schema
        let stores = RunningStores()
        let worker = try await stores.open(configuration)
        let server = try RecordingServer()
        let queue = try Queue(name: "orders", database: worker)
        let service = SyncService(queues: [queue], configuration: .init(connectivity: nil, pollInterval: nil))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await service.run() }
            try await Task.sleep(for: .milliseconds(300))
            for body in ["first", "second"] {
                let run = try await bgsync([
                    "enqueue", server.url.absoluteString, "--queue", "orders", "-d", body,
                    "--db", postgres.url + "?sslmode=disable&schema=\(schema)",
                ])
                #expect(run.status == 0, "\(run.stderr)")
            }
            var waited = 0
            while server.bodies.count < 2 && waited < 1_000 {
                try await Task.sleep(for: .milliseconds(10))
                waited += 1
            }
            group.cancelAll()
        }
        await stores.stopAll()
        #expect(server.bodies == ["first", "second"])
    }
}
