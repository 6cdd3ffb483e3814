import Foundation
import Hummingbird
import Logging

/// The posts API: `POST /posts` stores a post (once per id) and answers 201, or 200 for a post it
/// already has, or 422 for a post without a title; `GET /posts` lists them; `HEAD /health` answers
/// while the API is up.
struct PostsAPI: Sendable {
    /// The posts stored, in arrival order.
    actor Store {
        private(set) var posts: [Post] = []

        /// Stores `post`; returns `false` when a post with its id is already there.
        func add(_ post: Post) -> Bool {
            guard !posts.contains(where: { $0.id == post.id }) else { return false }
            posts.append(post)
            return true
        }
    }

    let store = Store()
    /// Called with each post stored.
    let onStored: @Sendable (Post) -> Void

    func application(port: Int) -> some ApplicationProtocol {
        let router = Router()
        router.head("health") { _, _ in HTTPResponse.Status.ok }
        router.get("posts") { [store] _, _ in await store.posts.map(\.title).joined(separator: "\n") }
        router.post("posts") { [store, onStored] request, context -> Response in
            let post = try await request.decode(as: Post.self, context: context)
            guard !post.title.isEmpty else {
                return Response(status: .unprocessableContent, body: .init(byteBuffer: ByteBuffer(string: "a post needs a title")))
            }
            let isNew = await store.add(post)
            if isNew { onStored(post) }
            return Response(status: isNew ? .created : .ok)
        }
        return Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: port), serverName: "posts-api"),
            logger: Logger(label: "posts-api", factory: { _ in SwiftLogNoOpLogHandler() }))
    }
}
