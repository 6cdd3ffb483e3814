import BackgroundSync
import BackgroundSyncTesting
import Foundation
import Testing

/// The SQLite driver against every clause of the store contract, each on a new file; a second
/// instance on the same file stands for a second process.
@Suite("SQLite store conformance")
struct SQLiteStoreConformanceTests {
    static let conformance = StoreConformance {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-conformance-\(UUID().uuidString)")
        let path = folder.appendingPathComponent("queue.sqlite").path
        return StoreConformance.Store(
            open: { try SQLiteQueueDatabase(path: path) },
            remove: { try FileManager.default.removeItem(at: folder) })
    }

    @Test(arguments: StoreConformance.checks)
    func clause(_ check: StoreConformance.Check) async throws {
        try await Self.conformance.run(check)
    }

    /// A driver that breaks a clause is caught, with the clause named: the suite can fail.
    @Test func aDriverThatReordersIsCaught() async throws {
        let broken = StoreConformance {
            StoreConformance.Store(open: { ReorderingDatabase(base: try SQLiteQueueDatabase.temporary()) })
        }
        let check = try #require(StoreConformance.checks.first { $0.name.hasPrefix("push keeps order") })
        let failure = await #expect(throws: ConformanceFailure.self) { try await broken.run(check) }
        #expect(failure?.description.contains("push keeps order per queue") == true)
    }
}

/// A driver that lists a queue backwards.
private struct ReorderingDatabase: QueueDatabase {
    let base: SQLiteQueueDatabase
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
        try await base.entries(queueName: queueName, state: state, afterPosition: afterPosition, limit: limit).reversed()
    }
    func entry(id: Int64) async throws -> QueueStoreEntry? { try await base.entry(id: id) }
    func countEntries(queueName: String, state: EntryState) async throws -> Int {
        try await base.countEntries(queueName: queueName, state: state)
    }
    func queueNames() async throws -> [String] { try await base.queueNames() }
    func claims(
        queueName: String, order: ReplayOrder, owner: LeaseOwner, leaseDuration: Duration, clock: any WallClock
    ) -> any ReplayClaims {
        base.claims(queueName: queueName, order: order, owner: owner, leaseDuration: leaseDuration, clock: clock)
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
