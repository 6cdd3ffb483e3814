import Foundation

/// Why a replay of an entry failed, as recorded with the entry (its last failure) and reported in
/// events.
public struct ReplayFailure: Sendable, Hashable, Codable {
    /// What failed. Recorded explicitly, never inferred from the other fields.
    public enum Kind: String, Sendable, Hashable, Codable, CaseIterable {
        /// No response came back: offline, connection refused or reset, timeout.
        case noResponse
        /// The server answered with a status that means failure (``ReplayFailure/status``).
        case httpStatus
        /// The app's ``QueueOptions/requestWillReplay`` hook threw before the request was sent.
        case hookFailed
        /// The stored request cannot be sent: it cannot be rebuilt, or its sealed secret header
        /// fields cannot be opened with the queue's key.
        case invalidRequest
        /// The stored entry cannot be read (a damaged row); it was set aside.
        case unreadableEntry
        /// An operator set the entry aside (``Queue/setAside(id:reason:)``, `bgsync set-aside`).
        case setAside
        /// Recorded by a version of the library that did not record the kind (a file shared during
        /// a rolling upgrade, or older entries): the message and status are all there is.
        case unrecorded
    }

    /// What failed.
    public var kind: Kind
    /// The HTTP status, when a response came back.
    public var status: Int?
    /// A one-line description of the failure.
    public var message: String
    /// The first bytes (up to 1 KiB) of the response body, when a response came back.
    public var responseExcerpt: Data?

    /// Creates a failure record.
    public init(kind: Kind, status: Int? = nil, message: String, responseExcerpt: Data? = nil) {
        self.kind = kind
        self.status = status
        self.message = message
        self.responseExcerpt = responseExcerpt
    }
}
