import Foundation

/// Whether a stored entry waits for replay or was set aside.
public enum EntryState: String, Codable, Sendable, Hashable {
    /// Waiting to be replayed.
    case pending
    /// Dead-lettered: set aside because retrying cannot help (the server refused it, it ran out of
    /// attempts, it cannot be read or sent, or an operator set it aside). Kept, with its last
    /// failure, until requeued or deleted.
    case dead
}

/// An entry to be written to a ``QueueStore`` (Workbox's `UnidentifiedQueueStoreEntry`).
public struct UnidentifiedQueueStoreEntry: Sendable, Hashable {
    /// The request.
    public var requestData: StorableRequest.RequestData
    /// When it was queued.
    public var timestamp: Date
    /// The app's metadata.
    public var metadata: [String: String]?
    /// The `Idempotency-Key` sent with every replay of this entry, if any.
    public var idempotencyKey: String?
    /// Secret header fields sealed with AES-GCM (``SecretHeaderStorage/encrypted(_:)``), if any.
    public var sealedSecrets: Data?
    /// The app's key for the thing the entry carries (an ``Outbox`` record's id), by which
    /// ``QueueDatabase/saveEntry(_:queueName:registeringSyncTag:)`` replaces it; `nil` for a plain request.
    public var recordKey: String?
    /// Attempts already made before it was stored (``Queue/send(_:metadata:)`` stores a request
    /// whose live attempt failed with 1). Default: 0.
    public var attempts: Int
    /// The earliest time of the first replay (the backoff after a failed live attempt); `nil`: at
    /// once.
    public var nextAttemptAt: Date?
    /// What the failed live attempt met, if any.
    public var lastFailure: ReplayFailure?

    /// Creates an entry to store.
    public init(
        requestData: StorableRequest.RequestData,
        timestamp: Date = Date(),
        metadata: [String: String]? = nil,
        idempotencyKey: String? = nil,
        sealedSecrets: Data? = nil,
        recordKey: String? = nil,
        attempts: Int = 0,
        nextAttemptAt: Date? = nil,
        lastFailure: ReplayFailure? = nil
    ) {
        self.requestData = requestData
        self.timestamp = timestamp
        self.metadata = metadata
        self.idempotencyKey = idempotencyKey
        self.sealedSecrets = sealedSecrets
        self.recordKey = recordKey
        self.attempts = attempts
        self.nextAttemptAt = nextAttemptAt
        self.lastFailure = lastFailure
    }
}

/// An entry as stored in a ``QueueDatabase`` (Workbox's `QueueStoreEntry`), with its replay history.
public struct QueueStoreEntry: Sendable, Hashable, Identifiable {
    /// The database id.
    public var id: Int64
    /// The queue it belongs to.
    public var queueName: String
    /// Its place in the queue's order: lower goes first. A dead letter keeps it, so a requeued
    /// entry goes back where it was; pages of a queue are read after a position.
    public var position: Int64
    /// The request.
    public var requestData: StorableRequest.RequestData
    /// When it was queued.
    public var timestamp: Date
    /// The app's metadata.
    public var metadata: [String: String]?
    /// Pending or dead-lettered.
    public var state: EntryState
    /// How many replays of this entry failed so far.
    public var attempts: Int
    /// The earliest time the next replay may happen, when a backoff is in force.
    public var nextAttemptAt: Date?
    /// What the last failed replay recorded (its kind, status, message and response excerpt);
    /// `nil` when no replay of the entry failed since it was queued or requeued.
    public var lastFailure: ReplayFailure?
    /// The `Idempotency-Key` sent with every replay, if any.
    public var idempotencyKey: String?
    /// Secret header fields sealed with AES-GCM, if any.
    public var sealedSecrets: Data?
    /// The app's key for what the entry carries (an ``Outbox`` record's id), if any.
    public var recordKey: String?

    /// Creates a stored entry (drivers use this when they read a row).
    public init(
        id: Int64,
        queueName: String,
        position: Int64 = 0,
        requestData: StorableRequest.RequestData,
        timestamp: Date,
        metadata: [String: String]? = nil,
        state: EntryState = .pending,
        attempts: Int = 0,
        nextAttemptAt: Date? = nil,
        lastFailure: ReplayFailure? = nil,
        idempotencyKey: String? = nil,
        sealedSecrets: Data? = nil,
        recordKey: String? = nil
    ) {
        self.id = id
        self.queueName = queueName
        self.position = position
        self.requestData = requestData
        self.timestamp = timestamp
        self.metadata = metadata
        self.state = state
        self.attempts = attempts
        self.nextAttemptAt = nextAttemptAt
        self.lastFailure = lastFailure
        self.idempotencyKey = idempotencyKey
        self.sealedSecrets = sealedSecrets
        self.recordKey = recordKey
    }
}
