// README snippets for app tests and storage drivers (see ReadmeSnippets.swift).
import BackgroundSync
import BackgroundSyncTesting
import Foundation
import Testing

enum ReadmeTestingSnippets {
    static func doubles() throws {
        // README: begin
        let clock = ManualWallClock()                        // backoff and expiry without sleeping
        let network = ManualConnectivityMonitor(.offline)    // flip it with network.set(.online)
        let transport = ScriptedTransport()                  // .fail(error), .answer(status:), .hang, .passThrough
        transport.script(.fail(URLError(.notConnectedToInternet)), .answer(status: 201))

        let queue = try Queue(name: "posts", options: QueueOptions(clock: clock),
                              database: try SQLiteQueueDatabase.temporary(), transport: transport)
        // README: end
        _ = (network, queue)
    }
}

/// Stands for another store: here, a SQLite file in a folder of its own.
struct MyStore: Sendable {
    let folder: URL

    static func makeEmpty() async throws -> MyStore {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("my-store-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        return MyStore(folder: folder)
    }

    func drop() async throws {
        try FileManager.default.removeItem(at: folder)
    }
}

/// Stands for the driver under test: opens the store.
func MyQueueDatabase(_ store: MyStore) async throws -> SQLiteQueueDatabase {
    try SQLiteQueueDatabase(path: store.folder.appendingPathComponent("queue.sqlite").path)
}

// README: begin
@Suite struct MyStoreConformance {
    static let conformance = StoreConformance {
        let store = try await MyStore.makeEmpty()   // a new, empty store for each check
        return StoreConformance.Store(open: { try await MyQueueDatabase(store) }, remove: { try await store.drop() })
    }

    @Test(arguments: StoreConformance.checks)
    func clause(_ check: StoreConformance.Check) async throws { try await Self.conformance.run(check) }
}
// README: end
