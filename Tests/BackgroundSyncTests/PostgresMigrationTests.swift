import BackgroundSync
@testable import BackgroundSyncPostgres
import Foundation
import Logging
import PostgresTestServer
import Testing

/// The schema's migrations on PostgreSQL: instances that start together on a new schema, and a
/// schema a newer version of the library wrote.
@Suite(
    "PostgreSQL migrations", .timeLimit(.minutes(2)),
    .enabled(if: PostgresTestServer.unavailableReason == nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresMigrationTests {
    private func configuration(_ name: String) async throws -> (PostgresTestServer, PostgresQueueDatabase.Configuration) {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: postgres.url + "?sslmode=disable")
        configuration.schema = uniqueSchema(name)
        return (postgres, configuration)
    }

    /// Four instances opened at once on a schema that does not exist yet: one creates it, the
    /// others wait for it (none fails on a table another one is creating), and all of them work.
    @Test func instancesThatStartTogetherMigrateOnce() async throws {
        let (postgres, configuration) = try await configuration("together")
        let stores = RunningStores()
        let opened = await withTaskGroup(of: Result<PostgresQueueDatabase, any Error>.self) { group in
            for _ in 0..<4 { group.addTask { await Result { try await stores.open(configuration) } } }
            return await group.reduce(into: []) { $0.append($1) }
        }
        // The stores stop whatever the checks throw: four connected instances would otherwise
        // stay on the shared server until the process exits.
        let checked = await Result {
            var databases: [PostgresQueueDatabase] = []
            for result in opened {
                switch result {
                case .success(let database): databases.append(database)
                case .failure(let error): Issue.record("an instance failed to open: \(error)")
                }
            }
            for (index, database) in databases.enumerated() {
                let entry = UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/\(index)", method: "POST"))
                _ = try await database.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
            }
            if let first = databases.first {
                #expect(try await first.countEntries(queueName: "q", state: .pending) == databases.count)
            }
            let versions = try await offCooperativePool {
                try PostgresSessionTests.psql(
                    postgres, "SELECT string_agg(version, ',' ORDER BY version) FROM \(configuration.schema).schema_migration")
            }
            #expect(versions == PostgresQueueDatabase.migrations.map(\.version).sorted().joined(separator: ","))
        }
        await stores.stopAll()
        try checked.get()
    }

    /// A schema with a migration this version does not know is refused with `schemaTooNew`, the
    /// unknown version named; nothing in it is changed.
    @Test func aSchemaANewerVersionWroteIsRefused() async throws {
        let (postgres, configuration) = try await configuration("newer")
        let stores = RunningStores()
        _ = try await stores.open(configuration)
        await stores.stopAll()
        _ = try await offCooperativePool {
            try PostgresSessionTests.psql(postgres, "INSERT INTO \(configuration.schema).schema_migration(version) VALUES ('9999-from-a-newer-version')")
        }
        var logger = Logger(label: "test.postgres")
        logger.logLevel = .critical
        let database = try PostgresQueueDatabase(configuration: configuration, logger: logger)
        let error = await #expect(throws: BackgroundSyncError.self) { try await database.run() }
        #expect(error?.code == .schemaTooNew)
        #expect(error?.message.contains("9999-from-a-newer-version") == true, "\(error?.message ?? "")")
        let count = try await offCooperativePool {
            try PostgresSessionTests.psql(postgres, "SELECT count(*) FROM \(configuration.schema).schema_migration")
        }
        #expect(count == "\(PostgresQueueDatabase.migrations.count + 1)")
    }
}
