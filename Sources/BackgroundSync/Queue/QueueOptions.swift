import Foundation
import Logging

/// How a ``Queue`` behaves. Every parameter has a default.
public struct QueueOptions: Sendable {
    /// How long an entry may wait. An older entry is removed instead of replayed, and reported
    /// (a log line at info level). Default: 7 days (Workbox's 10080 minutes).
    public var maxRetentionTime: Duration
    /// Run ``onSync`` once when the queue is created, as Workbox does at every service-worker start
    /// where the Background Sync API is missing. Default: `false`.
    public var forceSyncFallback: Bool
    /// What a sync of the queue's tag does. Default (`nil`): ``Queue/replayRequests()``.
    public var onSync: (@Sendable (Queue) async throws -> Void)?
    /// Add an `Idempotency-Key` header (a random UUID) when a `POST` or `PATCH` without one is
    /// queued; it is stored and sent unchanged with every replay, so a server that honours it
    /// applies a replayed request once. Default: `true`.
    public var addsIdempotencyKey: Bool
    /// How long a replay holds the entry it sends before another replayer may take it over (a
    /// process that dies holding it is detected sooner when it ran on the same host). Default:
    /// 5 minutes; keep it longer than a request's timeout.
    public var leaseDuration: Duration
    /// Where the queue logs; never bootstrapped by the library. Default: a logger labelled
    /// `background-sync`.
    public var logger: Logger

    /// Creates options; every parameter has its default.
    public init(
        maxRetentionTime: Duration = .seconds(7 * 24 * 60 * 60),
        forceSyncFallback: Bool = false,
        onSync: (@Sendable (Queue) async throws -> Void)? = nil,
        addsIdempotencyKey: Bool = true,
        leaseDuration: Duration = .seconds(300),
        logger: Logger = Logger(label: "background-sync")
    ) {
        self.maxRetentionTime = maxRetentionTime
        self.forceSyncFallback = forceSyncFallback
        self.onSync = onSync
        self.addsIdempotencyKey = addsIdempotencyKey
        self.leaseDuration = leaseDuration
        self.logger = logger
    }
}
