import Foundation

/// A server's answer to a request: what an ``HTTPTransport`` returns, what a replay classifies and
/// hands to the app's hooks, and what ``Queue/send(_:)`` reports.
///
/// A value type, so that a transport (AsyncHTTPClient, OpenAPI, a test double) answers without
/// building Foundation's `HTTPURLResponse`.
public struct ServerResponse: Sendable, Hashable {
    /// The HTTP status.
    public var status: Int
    /// Header fields, names lower-cased; a field the server sent several times holds its values
    /// joined with `", "`.
    public var headers: [String: String]
    /// The body.
    public var body: Data

    /// Creates a response. Header names are lower-cased; when two names differ only in case, their
    /// values are joined with `", "`.
    public init(status: Int, headers: [String: String] = [:], body: Data = Data()) {
        self.status = status
        self.headers = [:]
        self.body = body
        for (name, value) in headers { appendHeader(name, value) }
    }

    /// Creates a response from header fields in the order they came, repeated names included.
    public init(status: Int, headerFields: [(name: String, value: String)], body: Data = Data()) {
        self.status = status
        self.headers = [:]
        self.body = body
        for field in headerFields { appendHeader(field.name, field.value) }
    }

    /// The delay the server asked for in `Retry-After` (seconds or an HTTP date), if any.
    func retryAfter(now: Date) -> Duration? {
        headers["retry-after"].flatMap { RetryPolicy.parseRetryAfter($0, now: now) }
    }

    /// The failure recorded for this answer when it is retried, paused on or refused: its status
    /// and the first KiB of its body.
    var failure: ReplayFailure {
        ReplayFailure(
            kind: .httpStatus, status: status, message: "HTTP \(status)",
            responseExcerpt: body.isEmpty ? nil : Data(body.prefix(1024)))
    }

    /// Adds a header field, joining it to an earlier one of the same name.
    public mutating func appendHeader(_ name: String, _ value: String) {
        let name = name.lowercased()
        if let existing = headers[name] {
            headers[name] = existing + ", " + value
        } else {
            headers[name] = value
        }
    }
}

/// The earlier name of ``ServerResponse``.
@available(*, deprecated, renamed: "ServerResponse")
public typealias ReplayResponse = ServerResponse
