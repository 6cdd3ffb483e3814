import AsyncHTTPClient
import BackgroundSync
import Foundation
import NIOCore
import NIOHTTP1
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// An ``HTTPTransport`` on AsyncHTTPClient, for Linux services and servers: replays (and
/// `Queue.send`) go through an `HTTPClient` on SwiftNIO instead of `URLSession`.
///
/// ```swift
/// let queue = try Queue(name: "webhooks", transport: AsyncHTTPClientTransport())
/// ```
///
/// - A request's `timeoutInterval` is the deadline of the whole exchange (head and body).
/// - Redirects are followed for GET and HEAD only (up to ``Configuration/maxRedirects``); a write
///   that is redirected comes back as its 3xx response, never turned into a GET.
/// - A response body is kept up to ``Configuration/maxResponseBodySize``; the rest is read and
///   dropped, so a huge answer is still an answer.
/// - Connection refused or reset, a timeout, a TLS failure: thrown, so the entry stays queued.
public struct AsyncHTTPClientTransport: HTTPTransport {
    /// How the transport behaves. Every parameter has a default.
    public struct Configuration: Sendable {
        /// The most bytes of a response body kept. Default: 16 MiB.
        public var maxResponseBodySize: Int
        /// How many redirects a GET or HEAD follows. Default: 5.
        public var maxRedirects: Int

        /// Creates a configuration; every parameter has its default.
        public init(maxResponseBodySize: Int = 16 << 20, maxRedirects: Int = 5) {
            self.maxResponseBodySize = maxResponseBodySize
            self.maxRedirects = maxRedirects
        }
    }

    /// The client requests go through.
    public let client: HTTPClient
    /// The configuration.
    public let configuration: Configuration

    /// Creates a transport over `client` (default: ``sharedClient``). A client the app passes
    /// should be created with `redirectConfiguration: .disallow` (else AsyncHTTPClient follows a
    /// write's redirect itself, turning a POST into a GET on 301, 302 and 303) and
    /// `connectionPool.retryConnectionEstablishment = false`; the app shuts it down after the queues
    /// that use it are gone.
    public init(client: HTTPClient = AsyncHTTPClientTransport.sharedClient, configuration: Configuration = Configuration()) {
        self.client = client
        self.configuration = configuration
    }

    /// The client used when none is given: on NIO's singleton event loop group, with redirects
    /// left to the transport, and a connection that cannot be made failing the request at once
    /// (the queue retries it with its backoff; AsyncHTTPClient's own retries would hold an offline
    /// replay for the connect timeout). It lives as long as the process and is never shut down.
    public static let sharedClient: HTTPClient = {
        var configuration = HTTPClient.Configuration(redirectConfiguration: .disallow)
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    public func send(_ request: URLRequest) async throws -> ServerResponse {
        guard let url = request.url else { throw HTTPClientError.invalidURL }
        return try await execute(
            url: url, method: (request.httpMethod ?? "GET").uppercased(), headers: request.allHTTPHeaderFields ?? [:],
            body: request.httpBody, timeout: request.timeoutInterval)
    }

    /// Sends a stored request without building a `URLRequest`.
    public func send(_ request: StorableRequest) async throws -> ServerResponse {
        let data = request.toObject()
        return try await execute(
            url: request.url, method: data.method, headers: data.headers, body: data.body, timeout: data.timeoutInterval)
    }

    private func execute(
        url: URL, method: String, headers: [String: String], body: Data?, timeout: TimeInterval
    ) async throws -> ServerResponse {
        let deadline = NIODeadline.now() + .nanoseconds(Int64(max(timeout, 0.001) * 1e9))
        var fields = HTTPHeaders()
        fields.reserveCapacity(headers.count)
        for (field, value) in headers { fields.add(name: field, value: value) }
        let bytes = body.map { ByteBuffer(bytes: $0) }
        let (origin, credentials) = Self.splittingCredentials(url)
        var target = origin
        var redirects = 0
        while true {
            var outgoing = HTTPClientRequest(url: target.absoluteString)
            outgoing.method = HTTPMethod(rawValue: method)
            outgoing.headers = fields
            // AsyncHTTPClient ignores a URL's user and password: they go out as Basic
            // authentication (as URLSession sends them), to the URL's own host only.
            if let credentials, !fields.contains(name: "authorization"),
                target.host == origin.host, target.port == origin.port
            {
                outgoing.headers.add(name: "Authorization", value: credentials)
            }
            if let bytes { outgoing.body = .bytes(bytes) }
            let response = try await client.execute(outgoing, deadline: deadline)
            if method == "GET" || method == "HEAD", redirects < configuration.maxRedirects,
                let next = redirectTarget(of: response, from: target)
            {
                for try await _ in response.body {}
                redirects += 1
                target = next
                continue
            }
            return try await serverResponse(response)
        }
    }

    /// The URL without its user and password, and the `Authorization` value they make, if any.
    static func splittingCredentials(_ url: URL) -> (url: URL, authorization: String?) {
        // Most URLs have no `@` at all: no user or password, and no parse into components.
        guard url.absoluteString.utf8.contains(UInt8(ascii: "@")),
            var components = URLComponents(url: url, resolvingAgainstBaseURL: true),
            components.user != nil || components.password != nil
        else { return (url, nil) }
        let pair = (components.user ?? "") + ":" + (components.password ?? "")
        components.user = nil
        components.password = nil
        guard let bare = components.url else { return (url, nil) }
        return (bare, "Basic " + Data(pair.utf8).base64EncodedString())
    }

    private func redirectTarget(of response: HTTPClientResponse, from url: URL) -> URL? {
        switch response.status {
        case .movedPermanently, .found, .seeOther, .temporaryRedirect, .permanentRedirect:
            guard let location = response.headers.first(name: "location"),
                let next = URL(string: location, relativeTo: url)?.absoluteURL,
                next.scheme == "http" || next.scheme == "https"
            else { return nil }
            return next
        default:
            return nil
        }
    }

    private func serverResponse(_ response: HTTPClientResponse) async throws -> ServerResponse {
        var body = Data()
        let limit = configuration.maxResponseBodySize
        for try await chunk in response.body where body.count < limit {
            // Copied from the buffer's bytes at once (a collection would go through `Data`'s
            // generic append, which starts with a dynamic cast).
            chunk.withUnsafeReadableBytes { bytes in
                guard let base = bytes.baseAddress else { return }
                body.append(base.assumingMemoryBound(to: UInt8.self), count: min(bytes.count, limit - body.count))
            }
        }
        return ServerResponse(
            status: Int(response.status.code),
            headerFields: response.headers.map { (name: $0.name, value: $0.value) },
            body: body)
    }
}
