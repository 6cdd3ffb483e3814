import BackgroundSync
@testable import BackgroundSyncPostgres
import _ConnectionPoolModule
import Foundation
import LoopbackHTTPServer
import Logging
import ServiceLifecycle
import Testing

/// How the store names the failures of PostgresNIO's connection pool, and a stop before it was
/// ready, without a server.
@Suite("PostgreSQL pool errors")
struct PostgresErrorTests {
    /// The pool failing a wait for a connection after connecting failed for a minute (its circuit
    /// breaker; with a connection timeout of 20 s or more, it comes before the store's patience)
    /// says the server cannot be reached, in words; a cancelled wait does not.
    @Test func theConnectionPoolGivingUpIsUnreachable() throws {
        let database = try PostgresQueueDatabase(configuration: .init(url: "postgres://app:secret@db.example/app"))
        let error = database.mapError(ConnectionPoolError.connectionCreationCircuitBreakerTripped, action: "write to")
        #expect(error.code == .storeUnreachable)
        #expect(error.message.contains("gave up connecting") && !error.message.contains("ConnectionPoolError"), "\(error.message)")
        #expect(!error.message.contains("secret"))
        #expect(database.mapError(ConnectionPoolError.requestCancelled, action: "write to").code == .storage)
    }

    /// A write made while the store stops, once its pool shut down, says so in words.
    @Test func aShutDownPoolSaysTheStoreIsStopping() throws {
        let database = try PostgresQueueDatabase(configuration: .init(url: "postgres://app:secret@db.example/app"))
        let error = database.mapError(ConnectionPoolError.poolShutdown, action: "write to")
        #expect(error.message.contains("the store is stopping") && !error.message.contains("ConnectionPoolError"), "\(error.message)")
    }

    /// A store shut down while it is still connecting (to a port that takes the connection and
    /// never answers) is no failure: its service group stops without an error, and a later push
    /// says the store stopped.
    @Test func aStoreStoppedWhileConnectingStopsQuietly() async throws {
        let silent = try SilentPort()
        let database = try PostgresQueueDatabase(
            configuration: .init(url: "postgres://app@127.0.0.1:\(silent.port)/app?sslmode=disable"))
        let group = ServiceGroup(services: [database], logger: Logger(label: "test"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await Task.sleep(for: .milliseconds(300))
            await group.triggerGracefulShutdown()
            try await tasks.next()
        }
        let entry = UnidentifiedQueueStoreEntry(requestData: .init(url: "https://example.com/", method: "POST"))
        do {
            _ = try await database.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
            Issue.record("a push to a stopped store succeeded")
        } catch let error as BackgroundSyncError {
            #expect(error.message.contains("stopped before it was ready"), "\(error.message)")
        }
    }
}
