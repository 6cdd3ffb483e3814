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
            StoreConformance.Store(open: { ForwardingDatabase(base: try SQLiteQueueDatabase.temporary(), listsBackwards: true) })
        }
        let check = try #require(StoreConformance.checks.first { $0.name.hasPrefix("push keeps order") })
        let failure = await #expect(throws: ConformanceFailure.self) { try await broken.run(check) }
        #expect(failure?.description.contains("push keeps order per queue") == true)
    }
}
