import BackgroundSync
import BackgroundSyncPostgres
import BackgroundSyncTesting
import Foundation
import Logging
import PostgresTestServer
import Testing

/// The PostgreSQL driver against every clause of the store contract, each in a new schema of the
/// tests' own server; a second instance on the same schema stands for a second process.
@Suite(
    "PostgreSQL store conformance", .timeLimit(.minutes(5)),
    .enabled(if: PostgresTestServer.unavailableReason == nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresStoreConformanceTests {
    static let conformance = StoreConformance {
        let server = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: server.url)
        configuration.schema = uniqueSchema("conformance")
        configuration.maximumConnections = 4
        let stores = RunningStores()
        return StoreConformance.Store(
            open: { [configuration] in try await stores.open(configuration) },
            remove: { await stores.stopAll() })
    }

    @Test(arguments: StoreConformance.checks)
    func clause(_ check: StoreConformance.Check) async throws {
        try await Self.conformance.run(check)
    }
}

/// Stores a test opened, each running in a task of its own until the test ends.
final class RunningStores: Sendable {
    private let tasks = Locked<[Task<Void, any Error>]>([])

    /// Opens an instance and waits until it is ready (a first push-free read, made up to
    /// `attempts` times while the server cannot be reached).
    func open(_ configuration: PostgresQueueDatabase.Configuration, attempts: Int = 1) async throws -> PostgresQueueDatabase {
        var logger = Logger(label: "test.postgres")
        logger.logLevel = .warning
        let database = try PostgresQueueDatabase(configuration: configuration, logger: logger)
        let task = Task { try await database.run() }
        tasks.withLock { $0.append(task) }
        var attempt = 1
        while true {
            do {
                _ = try await database.syncTags()
                return database
            } catch let error as BackgroundSyncError where error.code == .storeUnreachable && attempt < attempts {
                attempt += 1
            }
        }
    }

    func stopAll() async {
        let all = tasks.withLock { tasks in
            defer { tasks = [] }
            return tasks
        }
        for task in all { task.cancel() }
        // Each store's run() returns once cancelled; a test does not wait more than 10 seconds for
        // it (a store that does not stop is a failure to report, not a reason for the suite to hang).
        let stopped = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let answered = Locked(false)
            let answer: @Sendable (Bool) -> Void = { stopped in
                if answered.withLock({ done in defer { done = true }; return !done }) { continuation.resume(returning: stopped) }
            }
            Task {
                for task in all { _ = await task.result }
                answer(true)
            }
            Task {
                try? await Task.sleep(for: .seconds(10))
                answer(false)
            }
        }
        if !stopped {
            Issue.record("a PostgreSQL store did not stop within 10 seconds of being cancelled")
        }
    }
}
