import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The default ``HTTPTransport``: Foundation's `URLSession`, on every platform.
public struct URLSessionTransport: HTTPTransport {
    /// The session requests go through.
    public let session: URLSession

    /// Creates a transport over `session` (default: a session with an ephemeral configuration,
    /// so no cookie or cache of the app leaks into replays unless the app passes its own session).
    public init(session: URLSession = URLSessionTransport.defaultSession) {
        self.session = session
    }

    /// The session used when none is given.
    public static let defaultSession: URLSession = URLSession(configuration: .ephemeral)

    public func send(_ request: URLRequest) async throws -> (Data, HTTPURLResponse) {
        let (data, response) = try await session.data(for: request)
        guard let http = response as? HTTPURLResponse else {
            throw URLError(.badServerResponse)
        }
        return (data, http)
    }
}
