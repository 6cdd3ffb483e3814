import BackgroundSync
import BackgroundSyncOpenAPI
import Foundation
import HTTPTypes
import LoopbackHTTPServer
import OpenAPIAsyncHTTPClient
@_spi(Generated) import OpenAPIRuntime
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

import struct BackgroundSyncAsyncHTTPClient.AsyncHTTPClientTransport

/// A client written as swift-openapi-generator writes one: each operation serialises its input
/// into an `HTTPRequest` and body, and `UniversalClient` runs the middlewares and the transport.
struct PostsClient: Sendable {
    let client: UniversalClient

    init(serverURL: URL, middlewares: [any ClientMiddleware]) {
        let transport = OpenAPIAsyncHTTPClient.AsyncHTTPClientTransport(
            configuration: .init(client: BackgroundSyncAsyncHTTPClient.AsyncHTTPClientTransport.sharedClient))
        client = UniversalClient(serverURL: serverURL, transport: transport, middlewares: middlewares)
    }

    /// `POST /posts?notify=true` with a JSON body; 201 returns the new id.
    func createPost(title: String) async throws -> Int {
        try await client.send(
            input: title, forOperation: "createPost",
            serializer: { title in
                var request = HTTPRequest(soar_path: "/posts?notify=true", method: .post)
                request.headerFields[.contentType] = "application/json"
                request.headerFields[HTTPField.Name("X-Client")!] = "posts-app"
                return (request, HTTPBody(#"{"title":"\#(title)"}"#))
            },
            deserializer: { response, body in
                guard response.status == .created, let body else { throw PostsClientError.unexpected(response.status.code) }
                return Int(String(decoding: try await Data(collecting: body, upTo: 1024), as: UTF8.self)) ?? -1
            })
    }

    /// `GET /posts`: a read, which the middleware leaves alone by default.
    func listPosts() async throws -> String {
        try await client.send(
            input: (), forOperation: "listPosts",
            serializer: { _ in (HTTPRequest(soar_path: "/posts", method: .get), nil) },
            deserializer: { response, body in
                guard response.status == .ok, let body else { throw PostsClientError.unexpected(response.status.code) }
                return String(decoding: try await Data(collecting: body, upTo: 1024), as: UTF8.self)
            })
    }
}

enum PostsClientError: Error { case unexpected(Int) }

@Suite("OpenAPI client middleware")
struct OpenAPIMiddlewareTests {
    private func setUp(
        selection: BackgroundSyncMiddleware.Selection = .writes
    ) throws -> (RecordingServer, Queue, PostsClient) {
        let server = try RecordingServer()
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        let client = PostsClient(
            serverURL: server.server.baseURL.appendingPathComponent("v1"),
            middlewares: [BackgroundSyncMiddleware(queue: queue, selection: selection)])
        return (server, queue, client)
    }

    @Test func aDeliveredOperationReturnsItsOutputAndIsNotQueued() async throws {
        let (server, queue, client) = try setUp()
        server.respond { _, _ in .respond(.text("41", status: 201)) }
        #expect(try await client.createPost(title: "Hello") == 41)
        #expect(try await queue.size() == 0)
        let received = try #require(server.received.current.first)
        #expect(received.target == "/v1/posts?notify=true")
        #expect(received.headers["idempotency-key"] != nil)
    }

    @Test func aFailedWriteIsQueuedAndReplayedByteForByte() async throws {
        let (server, queue, client) = try setUp()
        server.respond { _, index in index == 0 ? .respond(.text("busy", status: 503)) : .respond(.text("42", status: 201)) }
        let error = await #expect(throws: (any Error).self) { try await client.createPost(title: "Offline") }
        #expect(error is ClientError, "a generated client wraps a middleware's error")
        let queued = try #require(error?.requestQueued)
        #expect(queued.operationID == "createPost")
        guard case .status(let response) = queued.reason else {
            Issue.record("expected a status reason, got \(queued.reason)")
            return
        }
        #expect(response.status == 503)
        #expect(try await queue.size() == 1)

        #expect(try await queue.replayRequests().delivered == 1)
        let received = server.received.current
        #expect(received.count == 2)
        let (live, replay) = (received[0], received[1])
        #expect(replay.method == "POST")
        #expect(replay.target == live.target)
        #expect(replay.body == live.body)
        #expect(String(decoding: replay.body, as: UTF8.self) == #"{"title":"Offline"}"#)
        for field in ["content-type", "x-client", "idempotency-key"] {
            #expect(replay.headers[field] != nil && replay.headers[field] == live.headers[field], "\(field)")
        }
    }

    @Test func noConnectionIsQueued() async throws {
        let (server, queue, client) = try setUp()
        server.server.stop()
        let error = await #expect(throws: (any Error).self) { try await client.createPost(title: "Down") }
        guard case .noResponse = error?.requestQueued?.reason else {
            Issue.record("expected queued for lack of a response, got \(String(describing: error))")
            return
        }
        #expect(try await queue.size() == 1)
    }

    @Test func aReadOrARefusalIsAnOrdinaryFailure() async throws {
        let (server, queue, client) = try setUp()
        server.respond { request, _ in .respond(.text("nope", status: request.method == "GET" ? 503 : 422)) }
        let read = await #expect(throws: (any Error).self) { try await client.listPosts() }
        #expect(read?.requestQueued == nil)
        let refused = await #expect(throws: (any Error).self) { try await client.createPost(title: "") }
        #expect(refused?.requestQueued == nil)
        #expect(try await queue.size() == 0)
    }

    @Test func operationsCanBeChosenByID() async throws {
        let (server, queue, client) = try setUp(selection: .operations(["listPosts"]))
        server.respond { _, _ in .respond(.text("busy", status: 503)) }
        let write = await #expect(throws: (any Error).self) { try await client.createPost(title: "x") }
        #expect(write?.requestQueued == nil)
        let read = await #expect(throws: (any Error).self) { try await client.listPosts() }
        #expect(read?.requestQueued?.operationID == "listPosts")
        #expect(try await queue.size() == 1)
    }
}
