import BackgroundSync
import BackgroundSyncTesting
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The seed's record: a post written offline.
struct Post: Codable, Sendable, Identifiable, Equatable {
    var id: Int
    var title: String
}

/// Uploads posts to the loopback server as JSON, as an app's API client would; any status other
/// than 201 is an error (a 422 a rejection).
struct PostUploader: Sendable {
    let url: URL

    func upload(_ post: Post) async throws {
        var request = URLRequest(url: url)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = try JSONEncoder().encode(post)
        let response = try await URLSessionTransport().send(request)
        if response.status == 422 { throw OutboxRejection(String(decoding: response.body, as: UTF8.self)) }
        guard response.status == 201 else { throw URLError(.badServerResponse) }
    }
}

@Suite("Outbox of app records", .timeLimit(.minutes(1)))
struct OutboxTests {
    private func titles(_ server: RecordingServer) -> [String] {
        server.received.current.compactMap { try? JSONDecoder().decode(Post.self, from: $0.body).title }
    }

    @Test func recordsAreKeptInSaveOrderAndASaveOfTheSameIDReplacesInPlace() async throws {
        let outbox = try Outbox<Post>(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary()) { _ in }
        try await outbox.save(Post(id: 1, title: "one"))
        try await outbox.save(Post(id: 2, title: "two"))
        try await outbox.save(Post(id: 1, title: "one, edited"))
        #expect(try await outbox.all() == [Post(id: 1, title: "one, edited"), Post(id: 2, title: "two")])
        #expect(try await outbox.queue.syncManager.getTags() == [outbox.syncTag])
        #expect(try await outbox.delete(id: 1))
        #expect(try await outbox.delete(id: 1) == false)
        #expect(try await outbox.all() == [Post(id: 2, title: "two")])
    }

    @Test func syncUploadsInOrderAndDeletesEachOnceUploaded() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("{}", status: 201)) }
        let uploader = PostUploader(url: server.url)
        let outbox = try Outbox<Post>(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary(), upload: uploader.upload)
        for id in 1...3 { try await outbox.save(Post(id: id, title: "post \(id)")) }
        #expect(try await outbox.sync().delivered == 3)
        #expect(titles(server) == ["post 1", "post 2", "post 3"])
        #expect(try await outbox.all().isEmpty)
    }

    @Test func aFailedUploadStopsTheSyncAndKeepsThatRecordFirstWithItsBackoff() async throws {
        let server = try RecordingServer()
        server.respond { _, index in .respond(.text("{}", status: index == 1 ? 503 : 201)) }
        let uploader = PostUploader(url: server.url)
        let clock = ManualWallClock()
        let outbox = try Outbox<Post>(
            name: uniqueQueueName(), options: QueueOptions(maxRetentionTime: .seconds(1 << 40), clock: clock),
            database: try SQLiteQueueDatabase.temporary(), upload: uploader.upload)
        for id in 1...3 { try await outbox.save(Post(id: id, title: "post \(id)")) }
        let error = await #expect(throws: BackgroundSyncError.self) { try await outbox.sync() }
        #expect(error?.code == .queueReplayFailed)
        #expect(try await outbox.all().map(\.id) == [2, 3])
        let head = try #require(try await outbox.queue.database.entries(queueName: outbox.queue.name, state: .pending).first)
        #expect(head.attempts == 1)
        #expect(head.lastFailure?.kind == .noResponse)
        #expect(head.nextAttemptAt != nil)

        clock.advance(by: .seconds(3600))
        #expect(try await outbox.sync().delivered == 2)
        #expect(titles(server) == ["post 1", "post 2", "post 2", "post 3"])
    }

    @Test func aRejectedRecordIsSetAsideAndTheSyncGoesOn() async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            let post = try? JSONDecoder().decode(Post.self, from: request.body)
            return post?.title.isEmpty == true ? .respond(.text("a post needs a title", status: 422)) : .respond(.text("{}", status: 201))
        }
        let uploader = PostUploader(url: server.url)
        let outbox = try Outbox<Post>(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary(), upload: uploader.upload)
        try await outbox.save(Post(id: 1, title: ""))
        try await outbox.save(Post(id: 2, title: "fine"))
        let summary = try await outbox.sync()
        #expect(summary.delivered == 1 && summary.deadLettered == 1)
        let rejected = try await outbox.rejected()
        #expect(rejected.map(\.record) == [Post(id: 1, title: "")])
        #expect(rejected.first?.failure?.responseExcerpt == Data("a post needs a title".utf8))

        // Saving the record again (fixed) puts it back in line.
        try await outbox.save(Post(id: 1, title: "fixed"))
        #expect(try await outbox.rejected().isEmpty)
        #expect(try await outbox.sync().delivered == 1)
        #expect(titles(server) == ["", "fine", "fixed"])
    }

    @Test func recordsSurviveARestartBetweenSaveAndSync() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("{}", status: 201)) }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("outbox-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("app.sqlite").path
        let name = uniqueQueueName()
        do {
            let outbox = try Outbox<Post>(name: name, database: try SQLiteQueueDatabase(path: path)) { _ in
                throw URLError(.notConnectedToInternet)
            }
            try await outbox.save(Post(id: 7, title: "written offline"))
            try await outbox.save(Post(id: 8, title: "also offline"))
        }
        let uploader = PostUploader(url: server.url)
        let outbox = try Outbox<Post>(name: name, database: try SQLiteQueueDatabase(path: path), upload: uploader.upload)
        #expect(try await outbox.all().map(\.id) == [7, 8])
        #expect(try await outbox.queue.syncManager.getTags() == [outbox.syncTag])
        #expect(try await outbox.sync().delivered == 2)
        #expect(titles(server) == ["written offline", "also offline"])
    }

    @Test func aSaveDuringTheUploadOfThatRecordIsUploadedAfterIt() async throws {
        let started = AsyncStream<Void>.makeStream()
        let release = AsyncStream<Void>.makeStream()
        let uploaded = Box<[Post]>([])
        let outbox = try Outbox<Post>(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary()) { post in
            if uploaded.current.isEmpty {
                started.continuation.yield()
                for await _ in release.stream { break }
            }
            uploaded.withLock { $0.append(post) }
        }
        try await outbox.save(Post(id: 1, title: "first version"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { _ = try await outbox.sync() }
            for await _ in started.stream { break }
            try await outbox.save(Post(id: 1, title: "second version"))
            release.continuation.yield()
            try await group.waitForAll()
        }
        _ = try await outbox.sync()
        #expect(uploaded.current.map(\.title) == ["first version", "second version"])
        #expect(try await outbox.all().isEmpty)
    }

    @Test func aSyncServiceUploadsSavedRecordsByItself() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("{}", status: 201)) }
        let uploader = PostUploader(url: server.url)
        let outbox = try Outbox<Post>(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary(), upload: uploader.upload)
        let events = outbox.events()
        let service = SyncService(outboxes: [outbox], configuration: .init(connectivity: ManualConnectivityMonitor(.online)))
        try await withRunningService(service) {
            try await outbox.save(Post(id: 1, title: "synced by the service"))
            #expect(await firstEvent(events, where: isReplayed) != nil)
        }
        #expect(titles(server) == ["synced by the service"])
        #expect(try await outbox.all().isEmpty)
    }

    @Test func theDaemonLeavesOutboxesAlone() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let outbox = try Outbox<Post>(name: uniqueQueueName(), database: database) { _ in }
        try await outbox.save(Post(id: 1, title: "mine"))
        let plain = uniqueQueueName()
        _ = try await database.pushEntry(
            UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/", method: "POST")),
            queueName: plain, at: .tail, registeringSyncTag: nil)
        let service = SyncService(database: database, configuration: .init(connectivity: nil, pollInterval: .milliseconds(10)))
        try await withRunningService(service) {
            while !service.queues.contains(where: { $0.name == plain }) {
                try await Task.sleep(for: .milliseconds(5))
            }
        }
        #expect(!service.queues.contains { $0.name == outbox.queue.name })
    }
}
