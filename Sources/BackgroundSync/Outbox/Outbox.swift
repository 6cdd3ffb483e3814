import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A durable outbox of app records, uploaded in order by the app's own code when a sync runs: the
/// offline-first pattern (a PWA's `sync-posts` store, uploaded by its `sync` handler), typed.
///
/// ```swift
/// struct Post: Codable, Sendable, Identifiable { var id: UUID; var title: String }
///
/// let outbox = try Outbox<Post>(name: "posts") { post in
///     try await api.create(post)              // throws: kept, retried with backoff
/// }
/// try await outbox.save(Post(id: UUID(), title: "Hello"))   // stored, sync registered
/// let service = SyncService(outboxes: [outbox])              // uploads when online
/// ```
///
/// - ``save(_:)`` stores a record (JSON) durably and registers the outbox's sync. Saving a record
///   whose id is already waiting replaces it in place: it keeps its turn.
/// - ``sync()`` uploads the records in save order, one at a time, through `upload`, and deletes
///   each one once `upload` returned. The first that throws stops the sync and stays first, with
///   the queue's retry policy (backoff, attempts) and events; throw ``OutboxRejection`` for a
///   record the server refused for good: it is set aside (``rejected()``) and the sync goes on.
/// - Records survive restarts and crashes, and never expire; a record being uploaded when the
///   process dies is uploaded again (at least once), so `upload` should be idempotent (send the
///   record's id).
/// - A record that a running sync has already taken is not replaced by a save: the one being
///   uploaded, and those the store leased ahead of it (up to 8 with the SQLite store, 64 while
///   uploads go fast). The new version goes to the end and is uploaded after the old one.
///
/// The records are entries of a ``Queue`` named `outbox:<name>` (``queue``) on the same database
/// as request queues; `bgsync list --queue outbox:posts` shows them. Only a process that knows
/// `upload` can sync them: `bgsync run` and ``SyncService/init(database:options:transport:configuration:)``
/// leave `outbox:` queues alone.
public final class Outbox<Record: Codable & Sendable & Identifiable>: OutboxSyncing {
    /// The outbox's name.
    public let name: String
    /// The queue holding the records.
    public let queue: Queue

    /// The sync tag of the outbox: `background-sync:outbox:<name>`.
    public var syncTag: String { queue.syncTag }

    /// Creates an outbox.
    ///
    /// - Parameters:
    ///   - name: the outbox's name, unique among the outboxes of `database`.
    ///   - options: retry policy, hooks, logging, clock. Records never expire, and the outbox sends
    ///     one record at a time and classifies `upload`'s outcome itself, so
    ///     ``QueueOptions/maxRetentionTime``, ``QueueOptions/maxConcurrentReplays``,
    ///     ``QueueOptions/classifier``, the idempotency key and secret header options are not used.
    ///     Default: ``QueueOptions`` defaults.
    ///   - database: where records are stored; default: the shared SQLite database at
    ///     ``SQLiteQueueDatabase/defaultPath()``.
    ///   - syncManager: who runs the outbox's syncs; default: the database's shared manager.
    ///   - upload: sends one record. Returning means the server has it: the record is deleted.
    ///     Throwing keeps it for a later sync; ``OutboxRejection`` sets it aside.
    public init(
        name: String,
        options: QueueOptions = QueueOptions(),
        database: (any QueueDatabase)? = nil,
        syncManager: SyncManager? = nil,
        upload: @escaping @Sendable (Record) async throws -> Void
    ) throws {
        guard !name.isEmpty else {
            throw BackgroundSyncError(.invalidRequest, "an outbox name cannot be empty")
        }
        var options = options
        // A record is the user's data, not a request that goes stale.
        options.maxRetentionTime = .seconds(100 * 365 * 24 * 60 * 60)
        options.maxConcurrentReplays = 1
        options.classifier = .default
        options.addsIdempotencyKey = false
        options.secretHeaders = .plain
        self.name = name
        self.queue = try Queue(
            name: Queue.outboxNamePrefix + name, options: options, database: database,
            transport: OutboxUpload<Record>(upload: upload), syncManager: syncManager)
        var components = URLComponents()
        components.scheme = "https"
        components.host = "outbox.invalid"
        components.path = "/" + name
        guard let endpoint = components.url else {
            throw BackgroundSyncError(.invalidRequest, "the outbox name '\(name)' cannot be used")
        }
        self.endpoint = endpoint
    }

    /// The address the records' entries carry (never contacted: the upload closure sends them).
    private let endpoint: URL

    /// Stores `record` (insert, or replace the waiting record with its id, which keeps its place)
    /// and registers the outbox's sync. Returns once it is on disk. A record with this id that a
    /// running sync has taken (being uploaded, or leased ahead) is not replaced: the new version is
    /// queued at the end, after it.
    public func save(_ record: Record) async throws {
        let key = Self.key(record.id)
        var request = URLRequest(url: endpoint)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        do {
            request.httpBody = try encoder.encode(record)
        } catch {
            throw BackgroundSyncError(.invalidRequest, "the record \(key) cannot be encoded: \(error)")
        }
        var entry = try queue.capture.capture(
            QueueEntry(request: request, timestamp: queue.options.clock.now, metadata: ["outbox.recordID": key]))
        entry.recordKey = key
        _ = try await queue.save(captured: entry)
    }

    /// The records waiting for upload, in save order (one being uploaded now included).
    /// - Throws: a storage error naming the entry when a stored record cannot be decoded.
    public func all() async throws -> [Record] {
        try await queue.database.entries(queueName: queue.name, state: .pending).map(Self.record)
    }

    /// The records set aside (``OutboxRejection``, out of attempts, undecodable), with why.
    public func rejected() async throws -> [(record: Record, failure: ReplayFailure?)] {
        try await queue.database.entries(queueName: queue.name, state: .dead).map { (try Self.record($0), $0.lastFailure) }
    }

    /// Deletes the record with this id, waiting or set aside. Returns whether there was one. An
    /// upload of it already under way completes.
    @discardableResult
    public func delete(id: Record.ID) async throws -> Bool {
        try await queue.database.deleteEntries(queueName: queue.name, recordKey: Self.key(id)) > 0
    }

    /// Uploads the waiting records now, in order: ``Queue/replayRequests()`` of ``queue``.
    /// Throws ``BackgroundSyncError/Code/queueReplayFailed`` when an upload failed (the record
    /// stays first, with its backoff).
    @discardableResult
    public func sync() async throws -> ReplaySummary {
        try await queue.replayRequests()
    }

    /// The outbox's events (saved, uploaded, retry scheduled, rejected), each with the count after it.
    public func events() -> AsyncStream<QueueEvent> {
        queue.events()
    }

    /// The record key of an id: its JSON when the id is `Encodable` (UUID, Int, String and most
    /// ids: distinct ids give distinct keys), else its description.
    static func key(_ id: Record.ID) -> String {
        if let encodable = id as? any Encodable {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            if let data = try? encoder.encode(encodable) { return String(decoding: data, as: UTF8.self) }
        }
        return String(describing: id)
    }

    private static func record(_ entry: QueueStoreEntry) throws -> Record {
        do {
            return try JSONDecoder().decode(Record.self, from: entry.requestData.body ?? Data())
        } catch {
            throw BackgroundSyncError(.storage, "the record of entry \(entry.id) cannot be decoded: \(error)", entryID: entry.id)
        }
    }
}

/// An ``Outbox`` of any record type, for ``SyncService/init(queues:outboxes:configuration:)``.
public protocol OutboxSyncing: Sendable {
    /// The queue holding the outbox's records.
    var queue: Queue { get }
}

extension Queue {
    /// The prefix of the names of the queues that hold ``Outbox`` records: `outbox:`.
    public static let outboxNamePrefix = "outbox:"
}

/// Thrown by an ``Outbox``'s upload closure for a record the server refused for good (a 4xx that
/// retrying cannot fix): the record is set aside with `reason` instead of blocking the outbox.
public struct OutboxRejection: Error, Sendable, CustomStringConvertible {
    /// Why the record was refused (shown by ``Outbox/rejected()`` and `bgsync show`).
    public var reason: String
    /// The server's status, if any. Default: 422.
    public var status: Int

    /// Creates a rejection.
    public init(_ reason: String, status: Int = 422) {
        self.reason = reason
        self.status = status
    }

    public var description: String { "rejected (\(status)): \(reason)" }
}

/// The transport of an outbox's queue: decodes the record an entry carries and hands it to the
/// app's upload closure. Returning is a 204; ``OutboxRejection`` its status (a dead letter); a
/// record that cannot be decoded a 422; any other error is thrown (a failure to retry).
struct OutboxUpload<Record: Decodable & Sendable>: HTTPTransport {
    let upload: @Sendable (Record) async throws -> Void

    func send(_ request: URLRequest) async throws -> ServerResponse {
        let record: Record
        do {
            record = try JSONDecoder().decode(Record.self, from: request.httpBody ?? Data())
        } catch {
            return ServerResponse(status: 422, body: Data("the stored record cannot be decoded: \(error)".utf8))
        }
        do {
            try await upload(record)
        } catch let rejection as OutboxRejection {
            let status = (400..<500).contains(rejection.status) && ![401, 403, 408, 425, 429].contains(rejection.status)
                ? rejection.status : 422
            return ServerResponse(status: status, body: Data(rejection.reason.utf8))
        }
        return ServerResponse(status: 204)
    }
}
