import BackgroundSync
@testable import BackgroundSyncPostgres
import _ConnectionPoolModule
import Testing

/// How the store names the failures of PostgresNIO's connection pool, without a server.
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
}
