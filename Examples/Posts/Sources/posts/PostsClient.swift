import BackgroundSync
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The app's side: posts are saved in an outbox and uploaded to the API when a sync runs.
struct PostsClient: Sendable {
    let api: URL
    let outbox: Outbox<Post>

    init(api: URL, database: any QueueDatabase) throws {
        self.api = api
        let endpoint = api.appendingPathComponent("posts")
        outbox = try Outbox<Post>(name: "sync-posts", database: database) { post in
            try await Self.upload(post, to: endpoint)
        }
    }

    /// POSTs one post. 2xx: the API has it. 422: refused for good (set aside). Anything else, or
    /// no answer: thrown, so the post stays first in the outbox and is tried again later.
    static func upload(_ post: Post, to endpoint: URL) async throws {
        var request = URLRequest(url: endpoint, timeoutInterval: 5)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = try JSONEncoder().encode(post)
        let response = try await URLSessionTransport().send(request)
        switch response.status {
        case 200..<300: return
        case 422: throw OutboxRejection(String(decoding: response.body, as: UTF8.self))
        default: throw URLError(.badServerResponse)
        }
    }
}
