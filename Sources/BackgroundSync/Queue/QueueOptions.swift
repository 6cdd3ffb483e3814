import Foundation
import Logging
import Metrics
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// How a ``Queue`` behaves. Every parameter has a default.
public struct QueueOptions: Sendable {
    /// How long an entry may wait. An older entry is removed instead of replayed, and reported
    /// (an ``QueueEvent/Kind/expired`` event and a log line at info level). Default: 7 days
    /// (Workbox's 10080 minutes).
    public var maxRetentionTime: Duration
    /// Run ``onSync`` once when the queue is created, as Workbox does at every service-worker start
    /// where the Background Sync API is missing. Default: `false`.
    public var forceSyncFallback: Bool
    /// What a sync of the queue's tag does. Default (`nil`): ``Queue/replayRequests()``.
    public var onSync: (@Sendable (Queue) async throws -> Void)?
    /// When a failed entry is tried again, and how many times. Default: ``RetryPolicy/init(initialDelay:multiplier:maxDelay:jitter:maxAttempts:)``
    /// defaults (2 s, ×2, capped at 10 min, full jitter, no attempt limit).
    public var retryPolicy: RetryPolicy
    /// What each response means (delivered, retry, pause for credentials, dead letter). Default:
    /// ``ReplayClassifier/default``; ``ReplayClassifier/anyResponseIsSuccess`` is Workbox's behaviour.
    public var classifier: ReplayClassifier
    /// How many entries a replay sends at once. Default: 1, the ordered mode: entries go one at a
    /// time in order and replay stops at the first that must be retried. Above 1, the concurrent
    /// mode for independent requests: entries in backoff are skipped, not waited for.
    public var maxConcurrentReplays: Int
    /// Add an idempotency key header (a random UUID) when a `POST` or `PATCH` without one is sent
    /// through ``Queue/send(_:metadata:)`` or queued; it is stored and sent unchanged with every
    /// replay, so a server that honours it applies the request once however often it arrives.
    /// Default: `true`.
    public var addsIdempotencyKey: Bool
    /// The header field that carries the idempotency key. A request that already has it keeps its
    /// own value. Default: `Idempotency-Key` (Stripe, the IETF httpapi draft); others use
    /// `X-Idempotency-Key` or `PayPal-Request-Id`.
    public var idempotencyKeyHeader: String
    /// How a new key is written in ``idempotencyKeyHeader``. Default: ``IdempotencyKeyFormat/token``.
    public var idempotencyKeyFormat: IdempotencyKeyFormat
    /// What happens to secret headers (``secretHeaderNames``) at enqueue. Default: ``SecretHeaderStorage/strip``.
    public var secretHeaders: SecretHeaderStorage
    /// The header fields treated as secrets, lower-cased. Default: `authorization`, `cookie`,
    /// `proxy-authorization`.
    public var secretHeaderNames: Set<String>
    /// Called before each replay with the rebuilt request; returns the request to send (add a fresh
    /// token, rewrite an id from an earlier response). A thrown error keeps the entry and stops the
    /// replay, like a failed send. Default: `nil`.
    public var requestWillReplay: (@Sendable (URLRequest, QueueStoreEntry) async throws -> URLRequest)?
    /// Called after each delivered entry with the server's response. In an ordered replay it runs
    /// before the next entry is prepared (so it can record what the next request needs) and before
    /// the entry's deletion commits (delivered entries are deleted a few at a time, with the next
    /// leases): if the process dies in between, the entry is sent again and the hook runs again (at
    /// least once). Default: `nil`.
    public var requestDidReplay: (@Sendable (QueueStoreEntry, ServerResponse) async -> Void)?
    /// Called when an entry becomes a dead letter, with the entry as stored. Default: `nil`.
    public var onDeadLetter: (@Sendable (QueueStoreEntry) async -> Void)?
    /// Called when the server answers 401 or 403. Return `true` once fresh credentials are in place
    /// (``requestWillReplay`` applies them) to send the entry again at once; `false` pauses the
    /// queue until ``Queue/resume()``. Nothing is dropped either way. Default: `nil` (pause).
    public var onAuthenticationRequired: (@Sendable (QueueStoreEntry, ServerResponse) async -> Bool)?
    /// How long a replay holds the entry it sends before another replayer may take it over (a
    /// process that dies holding it is detected sooner when it ran on the same host). An ordered
    /// replay leases a few entries ahead and leases them again once half of this has passed.
    /// Default: 5 minutes; keep it longer than a request's timeout. At least 1 second (a queue
    /// refuses less).
    public var leaseDuration: Duration
    /// The clock for timestamps, expiry and backoff. Default: ``SystemWallClock``.
    public var clock: any WallClock
    /// Where the queue's metrics go (`background_sync_enqueued_total`, `…_replayed_total`,
    /// `…_retried_total`, `…_dead_lettered_total`, `…_expired_total` counters and the
    /// `background_sync_queue_size` gauge, dimension `queue`). Default: `nil`, the factory the app
    /// bootstrapped with `MetricsSystem.bootstrap`.
    public var metricsFactory: (any MetricsFactory)?
    /// Where the queue logs; never bootstrapped by the library. Default: a logger labelled
    /// `background-sync`.
    public var logger: Logger

    /// Creates options; every parameter has its default.
    public init(
        maxRetentionTime: Duration = .seconds(7 * 24 * 60 * 60),
        forceSyncFallback: Bool = false,
        onSync: (@Sendable (Queue) async throws -> Void)? = nil,
        retryPolicy: RetryPolicy = RetryPolicy(),
        classifier: ReplayClassifier = .default,
        maxConcurrentReplays: Int = 1,
        addsIdempotencyKey: Bool = true,
        idempotencyKeyHeader: String = "Idempotency-Key",
        idempotencyKeyFormat: IdempotencyKeyFormat = .token,
        secretHeaders: SecretHeaderStorage = .strip,
        secretHeaderNames: Set<String> = ["authorization", "cookie", "proxy-authorization"],
        requestWillReplay: (@Sendable (URLRequest, QueueStoreEntry) async throws -> URLRequest)? = nil,
        requestDidReplay: (@Sendable (QueueStoreEntry, ServerResponse) async -> Void)? = nil,
        onDeadLetter: (@Sendable (QueueStoreEntry) async -> Void)? = nil,
        onAuthenticationRequired: (@Sendable (QueueStoreEntry, ServerResponse) async -> Bool)? = nil,
        leaseDuration: Duration = .seconds(300),
        clock: any WallClock = SystemWallClock(),
        metricsFactory: (any MetricsFactory)? = nil,
        logger: Logger = Logger(label: "background-sync")
    ) {
        self.maxRetentionTime = maxRetentionTime
        self.forceSyncFallback = forceSyncFallback
        self.onSync = onSync
        self.retryPolicy = retryPolicy
        self.classifier = classifier
        self.maxConcurrentReplays = maxConcurrentReplays
        self.addsIdempotencyKey = addsIdempotencyKey
        self.idempotencyKeyHeader = idempotencyKeyHeader
        self.idempotencyKeyFormat = idempotencyKeyFormat
        self.secretHeaders = secretHeaders
        self.secretHeaderNames = secretHeaderNames
        self.requestWillReplay = requestWillReplay
        self.requestDidReplay = requestDidReplay
        self.onDeadLetter = onDeadLetter
        self.onAuthenticationRequired = onAuthenticationRequired
        self.leaseDuration = leaseDuration
        self.clock = clock
        self.metricsFactory = metricsFactory
        self.logger = logger
    }
}

/// How a new idempotency key is written in its header field.
public enum IdempotencyKeyFormat: Sendable, Hashable {
    /// A bare lower-case UUID, `6f1c…`: what Stripe and most APIs take.
    case token
    /// A structured-field string, the UUID in double quotes (`"6f1c…"`), as the IETF httpapi
    /// `Idempotency-Key` draft specifies.
    case structuredFieldString

    /// The header value for `key`.
    func headerValue(_ key: String) -> String {
        switch self {
        case .token: key
        case .structuredFieldString: "\"" + key + "\""
        }
    }
}
