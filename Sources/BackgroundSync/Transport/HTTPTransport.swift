import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Sends one HTTP request and returns the response, whatever its status.
///
/// A thrown error means no response was received (no connectivity, connection reset, timeout):
/// replay keeps the entry and retries later. Any response, 4xx and 5xx included, is returned, and
/// the queue classifies it.
public protocol HTTPTransport: Sendable {
    /// Sends `request` and returns the response body and head.
    func send(_ request: URLRequest) async throws -> (Data, HTTPURLResponse)
}
