import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A request in a ``Queue``, with the time it was queued and the app's metadata.
///
/// The Swift counterpart of Workbox's `QueueEntry` (`{request, timestamp, metadata}`).
public struct QueueEntry: Sendable {
    /// The request to send.
    public var request: URLRequest
    /// When the request was queued (default: now). Entries older than
    /// ``QueueOptions/maxRetentionTime`` are removed instead of replayed.
    public var timestamp: Date
    /// Free-form data the app attaches to the entry; stored with it.
    public var metadata: [String: String]?
    /// The entry's id in the database; `nil` for an entry that is not stored yet.
    public internal(set) var id: Int64?

    /// Creates an entry for ``Queue/pushRequest(_:)`` or ``Queue/unshiftRequest(_:)``.
    public init(request: URLRequest, timestamp: Date = Date(), metadata: [String: String]? = nil) {
        self.request = request
        self.timestamp = timestamp
        self.metadata = metadata
        self.id = nil
    }
}
