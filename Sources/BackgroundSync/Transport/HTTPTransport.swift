import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Sends one HTTP request and returns the server's answer, whatever its status.
///
/// A thrown error means no response was received (no connectivity, connection refused or reset,
/// timeout): the queue keeps the request and retries later. Any response, 4xx and 5xx included, is
/// returned, and the queue classifies it. A transport must not follow redirects for methods other
/// than GET and HEAD (a write must not be turned into a GET); a 3xx it does not follow is returned
/// as is.
///
/// ``URLSessionTransport`` is the default; the `BackgroundSyncAsyncHTTPClient` product has one for
/// Linux services; `ScriptedTransport` of `BackgroundSyncTesting` is for tests.
public protocol HTTPTransport: Sendable {
    /// Sends `request` and returns the server's answer.
    func send(_ request: URLRequest) async throws -> ServerResponse

    /// Sends a request as the queue stores it (already checked: an absolute http(s) URL, header
    /// names lower-cased). A replay calls this when nothing changes the stored request before it
    /// goes (no `requestWillFetch` plugin, no `requestWillReplay` hook, no sealed secret header
    /// fields), so that a transport that does not speak `URLRequest` natively need not build one.
    /// Default: ``send(_:)-(URLRequest)`` with ``StorableRequest/toRequest()``.
    func send(_ request: StorableRequest) async throws -> ServerResponse
}

extension HTTPTransport {
    public func send(_ request: StorableRequest) async throws -> ServerResponse {
        try await send(request.toRequest())
    }
}
