import Foundation

/// What ``Queue/send(_:metadata:)`` did with a request.
public enum SendResult: Sendable, Hashable {
    /// The server answered and the request is not queued: a success, or a refusal that retrying
    /// cannot fix (a 4xx other than 401/403/408/425/429 by default), which is the caller's to
    /// handle. Check ``ServerResponse/status``.
    case sent(ServerResponse)
    /// The request is stored in the queue (durably) with a sync registered, and will be replayed
    /// with the same idempotency key: the entry's id and why it was not delivered now.
    case queued(entryID: Int64, reason: QueuedReason)

    /// Why a request was queued instead of delivered.
    public enum QueuedReason: Sendable, Hashable {
        /// No response came: offline, connection refused or reset, timeout. The error's description.
        case noResponse(String)
        /// The server answered with a status the queue retries or pauses on (5xx, 408, 425, 429,
        /// 401/403 by default).
        case status(ServerResponse)
        /// An ordered queue had entries waiting: the request went behind them rather than overtake
        /// them, and was not tried.
        case behindPendingEntries
        /// The queue is paused (the server asked for credentials); the request was not tried.
        case paused
        /// The calling task was cancelled during the attempt: the server may or may not have the
        /// request; its replay carries the same idempotency key.
        case interrupted
    }

    /// The server's answer when the request was sent; `nil` when it was queued.
    public var response: ServerResponse? {
        if case .sent(let response) = self { return response }
        return nil
    }

    /// The entry's id when the request was queued; `nil` when it was sent.
    public var queuedEntryID: Int64? {
        if case .queued(let id, _) = self { return id }
        return nil
    }
}

extension SendResult.QueuedReason: CustomStringConvertible {
    public var description: String {
        switch self {
        case .noResponse(let message): "no response: \(message)"
        case .status(let response): "HTTP \(response.status)"
        case .behindPendingEntries: "earlier requests are still queued"
        case .paused: "the queue is paused until credentials are renewed"
        case .interrupted: "the attempt was cancelled"
        }
    }
}
