import ArgumentParser
import BackgroundSync
import Foundation
import LoopbackHTTPServer
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `bgsync demo`: the offline → queued → online → delivered story, on a temporary database and a
/// local "posts" server.
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the offline → queued → online → delivered story on a temporary database.",
        discussion: """
            Starts a local HTTP "posts" server, stops it, sends a few POSTs that fail and are \
            queued in a temporary SQLite database, starts the server again, dispatches the sync and \
            shows every post delivered and the queue empty. Takes a few seconds; leaves nothing behind.
            """
    )

    @Option(help: "How many posts to send while offline.")
    var posts: Int = 3

    func validate() throws {
        guard (1...100).contains(posts) else {
            throw ValidationError("--posts must be between 1 and 100")
        }
    }

    func run() async throws {
        let server = PostsServer()
        let port = try server.http.start()
        let endpoint = URL(string: "http://127.0.0.1:\(port)/api/posts")!
        print("1. A posts server is listening at \(endpoint.absoluteString).")

        let database = try SQLiteQueueDatabase.temporary()
        let transport = URLSessionTransport()
        let queue = try Queue(name: "posts", database: database, transport: transport)
        print("   Queue 'posts' stores failed requests in \(database.path).")

        server.http.stop()
        print("2. The server is stopped: the app is offline.")
        for index in 1...posts {
            let title = "Post \(index)"
            var request = URLRequest(url: endpoint, timeoutInterval: 5)
            request.httpMethod = "POST"
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.httpBody = try JSONEncoder().encode(["title": title, "content": "Written offline."])
            switch try await queue.send(request, metadata: ["title": title]) {
            case .sent(let response):
                print("   POST \(title) → HTTP \(response.status) (unexpected: the server is down)")
            case .queued(let id, let reason):
                print("   POST \(title) → queued as entry \(id) (\(reason)).")
            }
        }

        try await showQueue(queue)
        print("   Registered syncs: \(try await queue.syncManager.getTags())")

        try server.http.start(port: port)
        print("3. The server is back at the same address: the app is online.")
        print("   Dispatching SyncEvent(tag: \"\(queue.syncTag)\")…")
        try await queue.syncManager.dispatch(SyncEvent(tag: queue.syncTag))
        for post in server.received {
            print("   server stored #\(post.id) \"\(post.title)\" (Idempotency-Key \(post.idempotencyKey.prefix(8))…)")
        }

        let left = try await queue.size()
        print("4. Delivered \(server.received.count) of \(posts) posts; \(left) left in the queue; registered syncs: \(try await queue.syncManager.getTags()).")
        server.http.stop()
        guard server.received.count == posts, left == 0 else {
            throw ExitCode.failure
        }
    }

    private func showQueue(_ queue: Queue) async throws {
        let entries = try await queue.getAll()
        print("   The queue holds \(try await queue.size()) entries:")
        for entry in entries {
            let title = entry.metadata?["title"] ?? "?"
            print("     #\(entry.id ?? 0)  \(entry.request.httpMethod ?? "GET") \(entry.request.url?.absoluteString ?? "")  \"\(title)\"")
        }
    }

}

/// The demo's server: stores the posts it receives and answers 201 with the new id.
final class PostsServer: Sendable {
    struct Post: Sendable {
        var id: Int
        var title: String
        var idempotencyKey: String
    }

    private let posts = LockedPosts()
    let http: LoopbackHTTPServer

    init() {
        let posts = self.posts
        http = LoopbackHTTPServer { request in
            guard request.method == "POST", request.path == "/api/posts" else {
                return .respond(.text("not found", status: 404))
            }
            guard let fields = try? JSONDecoder().decode([String: String].self, from: request.body),
                let title = fields["title"]
            else {
                return .respond(.text(#"{"error":"a post needs a title"}"#, status: 422))
            }
            let id = posts.add(title: title, idempotencyKey: request.headers["idempotency-key"] ?? "")
            return .respond(.text(#"{"id":\#(id)}"#, status: 201, headers: ["Content-Type": "application/json"]))
        }
    }

    var received: [Post] { posts.all }
}

/// The posts received so far. `@unchecked Sendable`: guarded by `lock`.
final class LockedPosts: @unchecked Sendable {
    private let lock = NSLock()
    private var posts: [PostsServer.Post] = []

    /// Stores a post once per Idempotency-Key, as a server that honours the header does.
    func add(title: String, idempotencyKey: String) -> Int {
        lock.withLock {
            if !idempotencyKey.isEmpty, let existing = posts.first(where: { $0.idempotencyKey == idempotencyKey }) {
                return existing.id
            }
            posts.append(PostsServer.Post(id: posts.count + 1, title: title, idempotencyKey: idempotencyKey))
            return posts.count
        }
    }

    var all: [PostsServer.Post] { lock.withLock { posts } }
}
