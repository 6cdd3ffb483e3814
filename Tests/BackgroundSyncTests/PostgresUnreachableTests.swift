import BackgroundSync
import BackgroundSyncPostgres
import Foundation
import PostgresTestServer
import Testing

/// A store whose server went away: a call that waits for a pooled connection gives up after three
/// connection timeouts with a clear error, and the store works again once the server is back.
@Suite(
    "PostgreSQL server gone", .timeLimit(.minutes(2)),
    .enabled(if: PostgresTestServer.unavailableReason == nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresUnreachableTests {
    /// A store on a server of its own (which the test stops), with a 5 s connection timeout: 15 s
    /// of patience.
    private func openOnServerOfItsOwn(schema: String) async throws -> (PostgresTestServer, RunningStores, PostgresQueueDatabase) {
        let postgres = try await offCooperativePool { try PostgresTestServer() }
        var configuration = try PostgresQueueDatabase.Configuration(url: postgres.url + "?sslmode=disable&connect_timeout=5")
        configuration.schema = schema
        let stores = RunningStores()
        // Opening is not what these tests check: under the thread sanitizer, beside the whole
        // suite on two cores, a first connection to the new server can outlast the 5 s; the
        // store's first read is made a second time then (within the suite's time limit).
        return (postgres, stores, try await stores.open(configuration, attempts: 2))
    }

    @Test func aCallWaitingForAConnectionGivesUpAndTheStoreRecovers() async throws {
        let (postgres, stores, database) = try await openOnServerOfItsOwn(schema: "gone")
        _ = try await database.pushEntry(
            UnidentifiedQueueStoreEntry(requestData: .init(url: "http://127.0.0.1:9/a", method: "POST")),
            queueName: "orders", at: .tail, registeringSyncTag: nil)
        try await offCooperativePool { postgres.stop() }

        // Connections the pool held fail as they are used; then calls wait for a new one, which
        // does not come, until their time limit.
        var gaveUp: BackgroundSyncError?
        for _ in 0..<20 where gaveUp == nil {
            do {
                _ = try await database.countEntries(queueName: "orders", state: .pending)
                Issue.record("a read succeeded with the server stopped")
            } catch let error as BackgroundSyncError {
                #expect(error.code == .storeUnreachable, "\(error)")
                if error.message.contains("no connection within") { gaveUp = error }
            }
        }
        #expect(gaveUp != nil, "no call gave up waiting for a connection")

        try await offCooperativePool { try postgres.start() }
        var count: Int?
        let patience = ContinuousClock.now + .seconds(60)
        while count == nil && ContinuousClock.now < patience {
            count = try? await database.countEntries(queueName: "orders", state: .pending)
            if count == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(count == 1)
        await stores.stopAll()
    }

    /// Pushes written in their callers' tasks while the store is busy: the server stops between
    /// two of them, and the next push gives up after its patience, as any call does, with the
    /// same error.
    @Test func aPushJustAfterTheServerWentAwayGivesUp() async throws {
        let (postgres, stores, database) = try await openOnServerOfItsOwn(schema: "gone_pushing")
        let entry = UnidentifiedQueueStoreEntry(requestData: .init(url: "http://127.0.0.1:9/a", method: "POST"))
        for _ in 0..<5 { _ = try await database.pushEntry(entry, queueName: "orders", at: .tail, registeringSyncTag: nil) }
        try await offCooperativePool { postgres.stop() }
        let start = ContinuousClock.now
        var failure: BackgroundSyncError?
        while failure == nil && ContinuousClock.now - start < .seconds(60) {
            do {
                _ = try await database.pushEntry(entry, queueName: "orders", at: .tail, registeringSyncTag: nil)
                Issue.record("a push succeeded with the server stopped")
                break
            } catch let error as BackgroundSyncError {
                // A push may first meet a pooled connection the server closed; then it waits.
                if error.message.contains("no connection within") { failure = error }
            }
        }
        #expect(failure?.code == .storeUnreachable, "\(String(describing: failure))")
        // The patience is three connection timeouts, 15 s; a push that met a closed connection
        // first, then waited, stays within two of them.
        #expect(ContinuousClock.now - start < .seconds(45))
        await stores.stopAll()
    }
}
