import BackgroundSync
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

// `swift run posts` (or `posts demo`): the whole story in one process.
// `posts api --port 8080`: the API alone. `posts client --api http://127.0.0.1:8080 --db FILE "Title"…`:
// the app alone — it saves the posts, then syncs until the API has them all.
let arguments = Array(CommandLine.arguments.dropFirst())

func option(_ name: String) -> String? {
    arguments.firstIndex(of: name).flatMap { arguments.index(after: $0) < arguments.endIndex ? arguments[$0 + 1] : nil }
}

/// Runs the services until `done` returns, then shuts them down gracefully.
func run(_ services: [any Service], until done: @escaping @Sendable () async throws -> Void) async throws {
    let group = ServiceGroup(services: services, logger: Logger(label: "posts", factory: { _ in SwiftLogNoOpLogHandler() }))
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        try await done()
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
    }
}

/// Waits until the outbox is empty, printing its size as it changes.
func waitUntilEmpty(_ outbox: Outbox<Post>) async {
    for await size in outbox.queue.sizes() {
        print("   outbox: \(size) waiting")
        if size == 0 { return }
    }
}

func syncService(for client: PostsClient) -> SyncService {
    // Online means "the API answers": the probe asks /health every second while it does not.
    let probe = ProbeConnectivityMonitor(
        url: client.api.appendingPathComponent("health"),
        backoff: RetryPolicy(initialDelay: .seconds(1), maxDelay: .seconds(1), jitter: false))
    let quiet = Logger(label: "posts.sync", factory: { _ in SwiftLogNoOpLogHandler() })
    return SyncService(outboxes: [client.outbox], configuration: .init(connectivity: probe, logger: quiet))
}

switch arguments.first ?? "demo" {
case "api":
    let port = Int(option("--port") ?? "8080") ?? 8080
    let api = PostsAPI { print("stored: \($0.title)") }
    print("posts API on http://127.0.0.1:\(port)")
    try await api.application(port: port).runService()

case "client":
    let titles = arguments.dropFirst().filter { !$0.hasPrefix("--") && $0 != option("--api") && $0 != option("--db") }
    let database = try SQLiteQueueDatabase(path: option("--db") ?? SQLiteQueueDatabase.defaultPath())
    let client = try PostsClient(api: URL(string: option("--api") ?? "http://127.0.0.1:8080")!, database: database)
    for title in titles {
        try await client.outbox.save(Post(id: UUID(), title: title, content: "Written with the posts client."))
        print("saved: \(title)")
    }
    print("\(try await client.outbox.all().count) posts waiting; syncing until the API has them (Ctrl-C to stop)")
    try await run([syncService(for: client)]) { await waitUntilEmpty(client.outbox) }

default:
    let port = try freePort()
    let api = URL(string: "http://127.0.0.1:\(port)")!
    let database = try SQLiteQueueDatabase.temporary()
    let client = try PostsClient(api: api, database: database)
    print("1. The API (\(api)) is down. The app writes three posts; each is saved in the outbox.")
    for title in ["Hello", "Written on the train", "No signal here"] {
        try await client.outbox.save(Post(id: UUID(), title: title, content: "Written offline."))
        print("   saved \"\(title)\"")
    }
    print("   waiting: \(try await client.outbox.all().map(\.title)); sync tag \(client.outbox.syncTag)")
    do {
        try await client.outbox.sync()
    } catch {
        print("   a sync now fails and keeps them: \(error)")
    }

    print("2. The API starts. The app's SyncService sees it answer and uploads the posts in order.")
    let stored = PostsAPI { print("   API stored \"\($0.title)\"") }
    try await run([stored.application(port: port), syncService(for: client)]) {
        await waitUntilEmpty(client.outbox)
    }
    let count = await stored.store.posts.count
    print("3. The API has \(count) posts; the outbox is empty.")
    guard count == 3 else { exit(1) }
}
