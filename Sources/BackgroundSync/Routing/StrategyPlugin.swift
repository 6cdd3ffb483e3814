import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Workbox's plugin lifecycle callbacks for a strategy's fetch (``NetworkOnly``): observe or change
/// a request before it goes out, turn a response into a failure, react to a failure. Every callback
/// has a default that does nothing, so a plugin implements only the ones it needs.
///
/// ```swift
/// struct AddClientVersion: StrategyPlugin {
///     func requestWillFetch(_ request: URLRequest) async throws -> URLRequest {
///         var request = request
///         request.setValue("2.4", forHTTPHeaderField: "X-Client-Version")
///         return request
///     }
/// }
/// ```
public protocol StrategyPlugin: Sendable {
    /// Called before the request is sent, in plugin order; returns the request to send. A thrown
    /// error fails the fetch without sending. Also runs before each replay of a request that the
    /// strategy's ``BackgroundSyncPlugin`` queued (which stores the request as it was before these
    /// plugins ran), so a plugin that adds a fresh credential adds it at every replay. The queue
    /// keeps the plugin values of the first strategy it served: a plugin reads what changes (a
    /// token) when it is called, rather than holding it from its creation.
    func requestWillFetch(_ request: URLRequest) async throws -> URLRequest

    /// Called with the server's answer, in plugin order; returns the response to use. Throwing
    /// turns the answer into a failure: ``fetchDidFail(_:)`` runs, as for a network error (the
    /// seed's status plugin throws for a 5xx so that it gets queued).
    func fetchDidSucceed(request: URLRequest, response: ServerResponse) async throws -> ServerResponse

    /// Called when no usable response came (a network error, or a `fetchDidSucceed` that threw),
    /// in plugin order. ``BackgroundSyncPlugin`` queues the request here.
    func fetchDidFail(_ failure: FetchFailure) async throws
}

extension StrategyPlugin {
    public func requestWillFetch(_ request: URLRequest) async throws -> URLRequest { request }

    public func fetchDidSucceed(request: URLRequest, response: ServerResponse) async throws -> ServerResponse {
        response
    }

    public func fetchDidFail(_ failure: FetchFailure) async throws {}
}

/// What ``StrategyPlugin/fetchDidFail(_:)`` is told.
public struct FetchFailure: Sendable {
    /// The request as the strategy received it (with its idempotency key, when a
    /// ``BackgroundSyncPlugin`` adds one), before any `requestWillFetch` plugin ran.
    public var originalRequest: URLRequest
    /// The request as it was sent, after the `requestWillFetch` plugins.
    public var request: URLRequest
    /// Why the fetch failed: the transport's error, or what a `fetchDidSucceed` plugin threw.
    public var error: any Error
    /// The server's answer when a `fetchDidSucceed` plugin rejected it; `nil` when none came.
    public var response: ServerResponse?
}
