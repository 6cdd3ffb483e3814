// The README's Swift snippets, compiled with the tests. `ReadmeTests` checks that each ```swift
// block of README.md appears here between `README: begin` and `README: end` (imports aside, which
// are at the top of each file), so the README cannot drift from code that builds.
import BackgroundSync
import Foundation
import Logging
import ServiceLifecycle
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Stands for the app's own API client.
struct PostsAPI: Sendable {
    func create<Record: Sendable>(_ record: Record) async throws {}
}

/// Stands for the app's token store.
struct Tokens: Sendable {
    func fresh() async throws -> String { "token" }
}

let api = PostsAPI()
let tokens = Tokens()

enum ReadmeSnippets {
    static func quickStart() async throws {
        // README: begin
        // One queue per kind of write, in the default database file.
        let queue = try Queue(name: "posts")

        var request = URLRequest(url: URL(string: "https://api.example.com/posts")!)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = try JSONEncoder().encode(["title": "Hello"])

        // Tried now. Offline, or a 5xx/408/425/429/401/403 answer: stored on disk, a sync registered.
        switch try await queue.send(request, metadata: ["draft": "42"]) {
        case .sent(let response) where response.status < 400:
            print("created: HTTP \(response.status)")
        case .sent(let response):
            print("refused: HTTP \(response.status)")    // a 4xx is the app's to handle: not queued
        case .queued(let id, let reason):
            print("saved as entry \(id); it will sync (\(reason))")
        }

        // Later (a SyncService does this by itself, see below): replay what was queued.
        do {
            let summary = try await queue.replayRequests()
            print("delivered \(summary.delivered)")
        } catch {
            print("still queued: \(error)")               // e.g. still offline: entries keep their backoff
        }
        // README: end
    }

    static func routes(request: URLRequest) async throws {
        // README: begin
        let sync = try BackgroundSyncPlugin(name: "json-posts", options: QueueOptions(maxRetentionTime: .seconds(24 * 3600)))
        let router = FetchRouter(routes: [
            // POSTs to .../api/....json; StatusPlugin turns a 5xx into a failure, so it is queued too.
            FetchRoute(.post, .urlMatching(/\/api\/.*\.json/), handler: NetworkOnly(plugins: [StatusPlugin(), sync])),
        ])

        do {
            let response = try await router.handle(request)
            print("HTTP \(response.status)")
        } catch let failure as StrategyFailure where failure.isQueued {
            print("saved; it will sync (\(failure.underlying))")
        }
        // README: end
    }

    static func outbox() async throws {
        // README: begin
        struct Post: Codable, Sendable, Identifiable {
            var id: UUID
            var title: String
        }

        let outbox = try Outbox<Post>(name: "posts") { post in
            try await api.create(post)    // throws: kept, retried with backoff; OutboxRejection: set aside
        }
        try await outbox.save(Post(id: UUID(), title: "Written offline"))  // on disk, sync registered
        print(try await outbox.all().map(\.title))                          // waiting, in save order
        try await outbox.sync()                                             // or let a SyncService run it
        // README: end
    }

    static func syncService(outbox: Outbox<Note>, logger: Logger) async throws {
        // README: begin
        let comments = try Queue(name: "comments", options: QueueOptions(
            requestWillReplay: { request, _ in          // credentials are added at replay, never stored
                var request = request
                request.setValue("Bearer \(try await tokens.fresh())", forHTTPHeaderField: "Authorization")
                return request
            },
            requestDidReplay: { entry, response in      // the app sees the server's answer
                print("entry \(entry.id) delivered: HTTP \(response.status)")
            }))
        let service = SyncService(queues: [comments], outboxes: [outbox])   // netlink on Linux, NWPathMonitor on Apple
        let group = ServiceGroup(services: [service], gracefulShutdownSignals: [.sigterm], logger: logger)
        try await group.run()
        // README: end
    }
}

/// A record type for the snippets that need an outbox.
struct Note: Codable, Sendable, Identifiable {
    var id: Int
}
