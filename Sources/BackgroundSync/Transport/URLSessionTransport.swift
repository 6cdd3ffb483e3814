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

    /// Sends `request`. A cancelled caller gets `URLError(.cancelled)` at once. On Apple platforms
    /// the exchange is cancelled too; on Linux it runs to its answer or its timeout, unwatched:
    /// FoundationNetworking cannot cancel a task safely while it completes (its `cancel()` then
    /// crashes the process, or deadlocks it from a cancellation handler —
    /// swift-corelibs-foundation#5412, and `URLSession.data(for:)` shares both defects).
    public func send(_ request: URLRequest) async throws -> ServerResponse {
        let exchange = Exchange()
        let (data, response) = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<(Data, URLResponse), any Error>) in
                let task = session.dataTask(with: request) { data, response, error in
                    if let error {
                        exchange.end(.failure(error))
                    } else if let response {
                        exchange.end(.success((data ?? Data(), response)))
                    } else {
                        exchange.end(.failure(URLError(.badServerResponse)))
                    }
                }
                exchange.start(task, continuation)
            }
        } onCancel: {
            exchange.cancel()
        }
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

/// One data task and its caller's continuation, resumed once: by the task's completion, or by the
/// caller's cancellation.
private final class Exchange: Sendable {
    private struct State {
        var continuation: CheckedContinuation<(Data, URLResponse), any Error>?
        var task: URLSessionTask?
        /// The outcome that came before the task started (a caller cancelled early).
        var early: Result<(Data, URLResponse), any Error>?
    }

    private let state = Locked(State())

    func start(_ task: URLSessionTask, _ continuation: CheckedContinuation<(Data, URLResponse), any Error>) {
        let early = state.withLock { state in
            if state.early == nil {
                state.continuation = continuation
                state.task = task
            }
            return state.early
        }
        if let early {
            continuation.resume(with: early)
            // Never resumed, so no completion can race this: the session lets go of the task.
            task.cancel()
        } else {
            task.resume()
        }
    }

    /// The task ended (or failed to start).
    func end(_ outcome: Result<(Data, URLResponse), any Error>) {
        take(outcome)?.continuation.resume(with: outcome)
    }

    /// The caller was cancelled: it gets `URLError(.cancelled)` now.
    func cancel() {
        let outcome = Result<(Data, URLResponse), any Error>.failure(URLError(.cancelled))
        guard let (continuation, task) = take(outcome) else { return }
        continuation.resume(with: outcome)
        #if canImport(FoundationNetworking)
        _ = task
        #else
        task.cancel()
        #endif
    }

    /// The continuation and task to resume with `outcome`, unless the continuation was resumed
    /// already; before the task started, `outcome` is kept for ``start(_:_:)``.
    private func take(_ outcome: Result<(Data, URLResponse), any Error>)
        -> (continuation: CheckedContinuation<(Data, URLResponse), any Error>, task: URLSessionTask)?
    {
        state.withLock { state in
            guard let continuation = state.continuation, let task = state.task else {
                if state.task == nil, state.early == nil { state.early = outcome }
                return nil
            }
            state.continuation = nil
            return (continuation, task)
        }
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
