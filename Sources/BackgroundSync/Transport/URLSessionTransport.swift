import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The default ``HTTPTransport``: Foundation's `URLSession`, on every platform.
public struct URLSessionTransport: HTTPTransport {
    /// The session requests go through.
    public let session: URLSession

    /// Creates a transport over `session` (default: ``defaultSession``). A session the app passes
    /// keeps its own redirect policy, cookies and cache.
    public init(session: URLSession = URLSessionTransport.defaultSession) {
        self.session = session
    }

    /// The session used when none is given: an ephemeral configuration (no cookie or cache of the
    /// app leaks into replays), and redirects followed for GET and HEAD only — a redirected write
    /// comes back as the 3xx response instead of being turned into a GET.
    public static let defaultSession: URLSession = URLSession(
        configuration: .ephemeral, delegate: WritesAreNotRedirected(), delegateQueue: nil)

    public func send(_ request: URLRequest) async throws -> ServerResponse {
        let (data, response) = try await session.data(for: request)
        guard let http = response as? HTTPURLResponse else {
            throw URLError(.badServerResponse)
        }
        var answer = ServerResponse(status: http.statusCode, body: data)
        for (field, value) in http.allHeaderFields {
            if let field = field as? String, let value = value as? String { answer.appendHeader(field, value) }
        }
        return answer
    }
}

/// Refuses redirects of requests other than GET and HEAD, so that their 3xx response is returned.
private final class WritesAreNotRedirected: NSObject, URLSessionTaskDelegate, Sendable {
    func urlSession(
        _ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
        newRequest request: URLRequest, completionHandler: @escaping @Sendable (URLRequest?) -> Void
    ) {
        let method = task.originalRequest?.httpMethod?.uppercased() ?? "GET"
        completionHandler(method == "GET" || method == "HEAD" ? request : nil)
    }
}
