import BackgroundSync
import Foundation
import HTTPTypes
import OpenAPIRuntime
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A swift-openapi-runtime `ClientMiddleware` that queues the write operations of a generated
/// client when they cannot be delivered now: the `BackgroundSyncPlugin` of an OpenAPI client.
///
/// ```swift
/// let posts = try Queue(name: "posts")
/// let client = Client(serverURL: url, transport: transport,
///                     middlewares: [BackgroundSyncMiddleware(queue: posts)])
/// do {
///     let output = try await client.createPost(body: .json(post))
/// } catch let queued as RequestQueuedError {          // also found inside a ClientError
///     showSavedWillSync(entry: queued.entryID)
/// }
/// ```
///
/// Each selected operation goes through ``Queue/send(_:metadata:attempt:)``: the idempotency key
/// is added before the first attempt; the attempt runs through the rest of the middleware chain
/// and the client's transport; no response, or a status the queue retries or pauses on, stores the
/// full request (base URL, path and query, header fields, body bytes) and the operation throws
/// ``RequestQueuedError``. Any other answer is returned to the client as it came. Replays go
/// through the queue's ``HTTPTransport``, byte for byte.
///
/// Put it last in the client's `middlewares`, next to the transport: the middlewares before it
/// shape the request that is stored, and those after it do not run at replay. Credentials an
/// earlier middleware added (`Authorization`) are secret header fields: not stored by default, so
/// add them back at replay with ``QueueOptions/requestWillReplay``. Any error from the rest of the
/// chain counts as "no response" and queues the operation.
public struct BackgroundSyncMiddleware: ClientMiddleware {
    /// The queue that stores failed operations.
    public let queue: Queue
    /// The operations the middleware queues.
    public let selection: Selection
    /// The most bytes of a request or response body the middleware reads. Default: 16 MiB.
    public let maxBodySize: Int

    /// Which operations are queued when they fail.
    public struct Selection: Sendable {
        private let decide: @Sendable (HTTPRequest.Method, String) -> Bool

        /// Operations with these methods, except the listed operation ids.
        public static func methods(_ methods: Set<HTTPRequest.Method>, except excluded: Set<String> = []) -> Selection {
            Selection { method, operationID in methods.contains(method) && !excluded.contains(operationID) }
        }

        /// Exactly these operation ids (the `operationId`s of the OpenAPI document).
        public static func operations(_ operationIDs: Set<String>) -> Selection {
            Selection { _, operationID in operationIDs.contains(operationID) }
        }

        /// POST, PUT, PATCH and DELETE: the default.
        public static let writes = methods([.post, .put, .patch, .delete])

        /// Whether an operation is queued.
        public func contains(method: HTTPRequest.Method, operationID: String) -> Bool {
            decide(method, operationID)
        }
    }

    /// Creates the middleware.
    ///
    /// - Parameters:
    ///   - queue: where failed operations are stored and replayed from.
    ///   - selection: which operations; default: ``Selection/writes``.
    ///   - maxBodySize: the largest request or response body read; default 16 MiB.
    public init(queue: Queue, selection: Selection = .writes, maxBodySize: Int = 16 << 20) {
        self.queue = queue
        self.selection = selection
        self.maxBodySize = maxBodySize
    }

    public func intercept(
        _ request: HTTPRequest,
        body: HTTPBody?,
        baseURL: URL,
        operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, URL) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        guard selection.contains(method: request.method, operationID: operationID) else {
            return try await next(request, body, baseURL)
        }
        let bodyData = try await Self.collect(body, upTo: maxBodySize)
        let urlRequest = try Self.urlRequest(request, body: bodyData, baseURL: baseURL)
        let keyField = HTTPField.Name(queue.options.idempotencyKeyHeader)
        let answered = Answered()
        let result = try await queue.send(urlRequest, metadata: ["openapi.operationID": operationID]) { prepared in
            var outgoing = request
            if let keyField, outgoing.headerFields[keyField] == nil,
                let key = prepared.value(forHTTPHeaderField: keyField.rawName)
            {
                outgoing.headerFields[keyField] = key
            }
            let (response, responseBody) = try await next(outgoing, bodyData.map { HTTPBody($0) }, baseURL)
            let data = try await Self.collect(responseBody, upTo: maxBodySize) ?? Data()
            answered.set(response, data)
            return ServerResponse(
                status: response.status.code,
                headerFields: response.headerFields.map { (name: $0.name.canonicalName, value: $0.value) }, body: data)
        }
        switch result {
        case .sent:
            let (response, data) = try answered.get()
            return (response, data.isEmpty && request.method == .head ? nil : HTTPBody(data))
        case .queued(let entryID, let reason):
            throw RequestQueuedError(queueName: queue.name, entryID: entryID, operationID: operationID, reason: reason)
        }
    }

    private static func collect(_ body: HTTPBody?, upTo limit: Int) async throws -> Data? {
        guard let body else { return nil }
        return try await Data(collecting: body, upTo: limit)
    }

    /// The full request: the base URL's path followed by the operation's path and query.
    static func urlRequest(_ request: HTTPRequest, body: Data?, baseURL: URL) throws -> URLRequest {
        guard var components = URLComponents(url: baseURL, resolvingAgainstBaseURL: true),
            let operation = URLComponents(string: request.path ?? "")
        else {
            throw BackgroundSyncError(.invalidRequest, "cannot join '\(request.path ?? "")' to the base URL \(baseURL)")
        }
        components.percentEncodedPath += operation.percentEncodedPath
        components.percentEncodedQuery = operation.percentEncodedQuery
        guard let url = components.url else {
            throw BackgroundSyncError(.invalidRequest, "cannot join '\(request.path ?? "")' to the base URL \(baseURL)")
        }
        var urlRequest = URLRequest(url: url)
        urlRequest.httpMethod = request.method.rawValue
        for field in request.headerFields {
            urlRequest.addValue(field.value, forHTTPHeaderField: field.name.canonicalName)
        }
        urlRequest.httpBody = body
        return urlRequest
    }
}

/// The answer the attempt received, handed from the attempt closure to the middleware.
private final class Answered: Sendable {
    private let answer = Locked<(HTTPResponse, Data)?>(nil)

    func set(_ response: HTTPResponse, _ body: Data) { answer.withLock { $0 = (response, body) } }

    func get() throws -> (HTTPResponse, Data) {
        guard let answer = answer.withLock({ $0 }) else {
            throw BackgroundSyncError(.invalidRequest, "the operation was sent but its answer was not kept")
        }
        return answer
    }
}

/// Thrown by an operation that ``BackgroundSyncMiddleware`` queued instead of delivering: it is
/// stored and will be replayed. A generated client wraps it in a `ClientError`; find it with
/// ``Swift/Error/requestQueued``.
public struct RequestQueuedError: Error, Sendable, CustomStringConvertible {
    /// The queue that holds the request.
    public var queueName: String
    /// The id of the stored entry.
    public var entryID: Int64
    /// The operation's id in the OpenAPI document.
    public var operationID: String
    /// Why it was not delivered now.
    public var reason: SendResult.QueuedReason

    public var description: String {
        "\(operationID) was queued as entry \(entryID) in '\(queueName)' (\(reason)); it will be sent when a sync runs"
    }
}

extension Error {
    /// The ``RequestQueuedError`` this error is, or wraps (a generated client's `ClientError`);
    /// `nil` for any other failure.
    public var requestQueued: RequestQueuedError? {
        if let queued = self as? RequestQueuedError { return queued }
        if let client = self as? ClientError { return client.underlyingError.requestQueued }
        return nil
    }
}
