import Foundation

/// Something that happened to a queue, for a UI ("3 posts waiting", a toast on delivery) or a log.
public struct QueueEvent: Sendable {
    /// What happened.
    public enum Kind: Sendable {
        /// A request was stored.
        case enqueued
        /// A request was delivered; the server's response.
        case replayed(ServerResponse)
        /// A replay failed and the entry will be tried again after `delay`: its failed `attempts`
        /// so far and the failure.
        case retryScheduled(delay: Duration, attempts: Int, failure: ReplayFailure)
        /// The entry was set aside as a dead letter, and why.
        case deadLettered(ReplayFailure)
        /// The entry was older than `maxRetentionTime` and was removed.
        case expired
        /// The server asked for credentials (401/403): replay is paused until ``Queue/resume()``.
        case paused(status: Int)
        /// Replay was resumed.
        case resumed
    }

    /// What happened.
    public var kind: Kind
    /// The queue.
    public var queueName: String
    /// The entry concerned, if any.
    public var entryID: Int64?
    /// The number of entries waiting in the queue after the event.
    public var size: Int
}
