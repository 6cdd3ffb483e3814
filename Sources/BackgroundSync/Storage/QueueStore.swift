import Foundation

/// One queue's view of a ``QueueDatabase``: Workbox's `QueueStore`.
///
/// It stores and removes entries without any policy (no expiry, no sync); ``Queue`` adds those.
public struct QueueStore: Sendable {
    /// The queue this store works on.
    public let queueName: String
    /// The database holding the entries.
    public let database: any QueueDatabase

    /// Creates the view of `queueName` in `database`.
    public init(queueName: String, database: any QueueDatabase) {
        self.queueName = queueName
        self.database = database
    }

    /// Stores an entry after the queue's last one; returns its id.
    @discardableResult
    public func pushEntry(_ entry: UnidentifiedQueueStoreEntry) async throws -> Int64 {
        try await database.pushEntry(entry, queueName: queueName, at: .tail, registeringSyncTag: nil).id
    }

    /// Stores an entry before the queue's first one (other queues are not affected); returns its id.
    @discardableResult
    public func unshiftEntry(_ entry: UnidentifiedQueueStoreEntry) async throws -> Int64 {
        try await database.pushEntry(entry, queueName: queueName, at: .head, registeringSyncTag: nil).id
    }

    /// Removes and returns the last pending entry, or `nil`.
    public func popEntry() async throws -> QueueStoreEntry? {
        try await database.removeEntry(queueName: queueName, at: .tail)
    }

    /// Removes and returns the first pending entry, or `nil`.
    public func shiftEntry() async throws -> QueueStoreEntry? {
        try await database.removeEntry(queueName: queueName, at: .head)
    }

    /// The pending entries, in order.
    public func getAll() async throws -> [QueueStoreEntry] {
        try await database.entries(queueName: queueName, state: .pending)
    }

    /// The dead-lettered entries, in order.
    public func getDeadLetters() async throws -> [QueueStoreEntry] {
        try await database.entries(queueName: queueName, state: .dead)
    }

    /// The number of pending entries, expired ones included.
    public func size() async throws -> Int {
        try await database.countEntries(queueName: queueName, state: .pending)
    }

    /// Deletes the entry with this id.
    public func deleteEntry(id: Int64) async throws {
        try await database.deleteEntry(id: id)
    }
}
