import BackgroundSync
import Foundation

/// A driver that hands every call to a SQLite database, for tests that need to see or break what a
/// driver does: it can list a queue backwards (a broken driver), and it keeps the claims it made.
struct ForwardingDatabase: QueueDatabase {
    let base: SQLiteQueueDatabase
    /// Lists entries in the reverse of their order.
    var listsBackwards = false
    /// The claims of every replay, in the order they were made.
    let claimsMade = Box<[any ReplayClaims]>([])
    var identity: String { base.identity }

    func pushEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, at end: QueueEnd, registeringSyncTag syncTag: String?
    ) async throws -> PushedEntry {
        try await base.pushEntry(entry, queueName: queueName, at: end, registeringSyncTag: syncTag)
    }
    func saveEntry(
        _ entry: UnidentifiedQueueStoreEntry, queueName: String, registeringSyncTag syncTag: String?
    ) async throws -> PushedEntry {
        try await base.saveEntry(entry, queueName: queueName, registeringSyncTag: syncTag)
    }
    func deleteEntries(queueName: String, recordKey: String) async throws -> Int {
        try await base.deleteEntries(queueName: queueName, recordKey: recordKey)
    }
    func removeEntry(queueName: String, at end: QueueEnd) async throws -> QueueStoreEntry? {
        try await base.removeEntry(queueName: queueName, at: end)
    }
    func entries(
        queueName: String, state: EntryState, afterPosition: Int64?, limit: Int?
    ) async throws -> [QueueStoreEntry] {
        let entries = try await base.entries(queueName: queueName, state: state, afterPosition: afterPosition, limit: limit)
        return listsBackwards ? entries.reversed() : entries
    }
    func entry(id: Int64) async throws -> QueueStoreEntry? { try await base.entry(id: id) }
    func countEntries(queueName: String, state: EntryState) async throws -> Int {
        try await base.countEntries(queueName: queueName, state: state)
    }
    func queueNames() async throws -> [String] { try await base.queueNames() }
    func claims(
        queueName: String, order: ReplayOrder, owner: LeaseOwner, leaseDuration: Duration, clock: any WallClock
    ) -> any ReplayClaims {
        let claims = base.claims(queueName: queueName, order: order, owner: owner, leaseDuration: leaseDuration, clock: clock)
        claimsMade.withLock { $0.append(claims) }
        return claims
    }
    func requeueDeadEntries(queueName: String, ids: [Int64]?) async throws -> Int {
        try await base.requeueDeadEntries(queueName: queueName, ids: ids)
    }
    func setAsideEntries(queueName: String, ids: [Int64], failure: ReplayFailure) async throws -> Int {
        try await base.setAsideEntries(queueName: queueName, ids: ids, failure: failure)
    }
    func deleteEntries(ids: [Int64]) async throws -> Int { try await base.deleteEntries(ids: ids) }
    func deleteEntries(queueName: String?, state: EntryState?) async throws -> Int {
        try await base.deleteEntries(queueName: queueName, state: state)
    }
    func registerSyncTag(_ tag: String, at date: Date) async throws { try await base.registerSyncTag(tag, at: date) }
    func unregisterSyncTag(_ tag: String) async throws { try await base.unregisterSyncTag(tag) }
    func syncTags() async throws -> [String] { try await base.syncTags() }
}
