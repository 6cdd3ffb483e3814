// README snippets for OpenAPI clients (see ReadmeSnippets.swift), with a `Client` written as
// swift-openapi-generator writes one for an API with a `createPost` operation.
import BackgroundSync
import BackgroundSyncOpenAPI
import Foundation
import HTTPTypes
import OpenAPIAsyncHTTPClient
@_spi(Generated) import OpenAPIRuntime

/// The generated client's shape: one method per operation, over `UniversalClient`.
struct Client: Sendable {
    let client: UniversalClient

    init(serverURL: URL, transport: any ClientTransport, middlewares: [any ClientMiddleware] = []) {
        client = UniversalClient(serverURL: serverURL, transport: transport, middlewares: middlewares)
    }

    struct NewPost: Codable, Sendable {
        var title: String
    }

    enum Body: Sendable {
        case json(NewPost)
    }

    func createPost(body: Body) async throws -> HTTPResponse.Status {
        try await client.send(
            input: body, forOperation: "createPost",
            serializer: { body in
                guard case .json(let post) = body else { fatalError() }
                var request = HTTPRequest(soar_path: "/posts", method: .post)
                request.headerFields[.contentType] = "application/json"
                return (request, HTTPBody(try JSONEncoder().encode(post)))
            },
            deserializer: { response, _ in response.status })
    }
}

enum ReadmeOpenAPISnippets {
    static func middleware() async throws {
        // README: begin
        let outgoing = try Queue(name: "api-writes")
        let client = Client(
            serverURL: URL(string: "https://api.example.com/v1")!,
            transport: OpenAPIAsyncHTTPClient.AsyncHTTPClientTransport(),   // or OpenAPIURLSession's
            middlewares: [BackgroundSyncMiddleware(queue: outgoing)])

        do {
            _ = try await client.createPost(body: .json(.init(title: "Hello")))
        } catch let error where error.requestQueued != nil {
            print("saved as entry \(error.requestQueued!.entryID); it will sync")
        }
        // README: end
    }
}
