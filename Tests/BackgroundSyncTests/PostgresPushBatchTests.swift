import BackgroundSync
@_spi(Testing) import BackgroundSyncPostgres
import BackgroundSyncTesting
import Foundation
import Logging
import PostgresTestServer
import Testing

/// Concurrent pushes of one PostgreSQL store instance share statements and commits: checked on a
/// real server, content and sizes included, and a bad entry among them.
@Suite(
    "PostgreSQL pushes sharing a statement", .timeLimit(.minutes(3)),
    .enabled(if: PostgresTestServer.unavailableReason == nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresPushBatchTests {
    private func withStore(
        _ body: (PostgresQueueDatabase, _ server: PostgresTestServer, _ schema: String) async throws -> Void
    ) async throws {
        let server = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: server.url)
        configuration.schema = uniqueSchema("batch")
        var logger = Logger(label: "test.postgres")
        logger.logLevel = .warning
        try await PostgresQueueDatabase.withDatabase(configuration, logger: logger) { database in
            try await body(database, server, configuration.schema)
        }
    }

    /// A value read with `psql` (statements that fail are recorded as issues).
    private func query(_ server: PostgresTestServer, _ sql: String) async throws -> String {
        let run = try await offCooperativePool {
            try runChild(
                URL(fileURLWithPath: "/usr/bin/psql"),
                ["-h", "127.0.0.1", "-p", "\(server.port)", "-U", server.user, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc", sql],
                environment: ["PATH": "/usr/bin:/bin"])
        }
        #expect(run.status == 0, "psql: \(run.stderr)")
        return run.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// An entry with every field set, different for each index: bytes, Unicode, quotes, a
    /// fractional time, metadata, a key and sealed secrets.
    private func entry(_ index: Int) -> UnidentifiedQueueStoreEntry {
        UnidentifiedQueueStoreEntry(
            requestData: StorableRequest.RequestData(
                url: "https://batch.example/p/\(index)?q=%C3%A9&r=\"\(index)\"", method: "POST",
                headers: ["content-type": "application/octet-stream", "x-quote": "a \"b\" \\ c \(index)", "x-é": "ü"],
                body: Data([0, 1, 2, 0xFF, 0xFE, 0x0A, 0x0D, UInt8(index % 256)]), timeoutInterval: 12.5 + Double(index),
                cachePolicy: UInt(index % 3), httpShouldHandleCookies: index.isMultiple(of: 2),
                allowsCellularAccess: !index.isMultiple(of: 3), mainDocumentURL: index.isMultiple(of: 5) ? nil : "https://batch.example/"),
            timestamp: Date(timeIntervalSince1970: 1_700_000_000.123_456 + Double(index) / 7),
            metadata: index.isMultiple(of: 4) ? nil : ["n": "\(index)", "quote": "\"\\"],
            idempotencyKey: "key-\(index)",
            sealedSecrets: index.isMultiple(of: 2) ? Data([9, 8, UInt8(index % 256)]) : nil)
    }

    @Test func concurrentPushesShareCommitsAndKeepEverything() async throws {
        try await withStore { database, server, schema in
            let queues = ["a", "b"]
            // A queue's first push by an instance writes its row, alone.
            for name in queues { _ = try await database.pushEntry(entry(0), queueName: name, at: .tail, registeringSyncTag: nil) }
            let count = 96
            let pushed = try await withThrowingTaskGroup(of: (Int, PushedEntry).self) { group in
                for index in 1...count {
                    group.addTask {
                        let tag = index.isMultiple(of: 3) ? nil : "tag-\(index % 2)"
                        return (index, try await database.pushEntry(
                            entry(index), queueName: queues[index % 2], at: .tail, registeringSyncTag: tag))
                    }
                }
                var pushed: [Int: PushedEntry] = [:]
                for try await (index, entry) in group { pushed[index] = entry }
                return pushed
            }
            #expect(Set(pushed.values.map(\.id)).count == count, "each push has an entry of its own")
            for (offset, name) in queues.enumerated() {
                let indexes = (1...count).filter { $0 % 2 == offset }
                // Each push sees the queue with its own entry, after the ones written before it.
                #expect(indexes.map { pushed[$0]!.size }.sorted() == Array(2...(indexes.count + 1)))
                let stored = try await database.entries(queueName: name, state: .pending)
                #expect(stored.count == indexes.count + 1)
                let byID = Dictionary(uniqueKeysWithValues: stored.map { ($0.id, $0) })
                for index in indexes {
                    let expected = entry(index)
                    guard let found = byID[pushed[index]!.id] else {
                        Issue.record("entry \(index) is not in queue \(name)")
                        continue
                    }
                    #expect(found.requestData == expected.requestData)
                    #expect(found.timestamp == expected.timestamp)
                    #expect(found.metadata == expected.metadata)
                    #expect(found.idempotencyKey == expected.idempotencyKey)
                    #expect(found.sealedSecrets == expected.sealedSecrets)
                    #expect(found.attempts == 0 && found.lastFailure == nil && found.nextAttemptAt == nil)
                }
            }
            #expect(Set(try await database.syncTags()) == ["tag-0", "tag-1"])
            // Fewer transactions than pushes: each batch committed several entries at once.
            let transactions = try await query(
                server, "SELECT count(DISTINCT xmin::text) FROM \(schema).entry WHERE queued_at > 1600000000")
            #expect((Int(transactions) ?? count) < count / 2, "\(transactions) transactions for \(count) pushes")
        }
    }

    /// Pushes one after another on a busy store (written in their callers' tasks) whose callers are
    /// cancelled before or while they run: each is stored and returns its id (a cancelled wait for a
    /// connection hands the push to the store's own task), or, if the cancellation cut the answer
    /// off, says that the entry may be stored. Nothing else fails, and every id returned is stored.
    @Test func pushesOfCancelledCallersAreStoredOrReported() async throws {
        try await withStore { database, _, _ in
            for index in 0..<20 {
                let pushed = try await database.pushEntry(entry(index), queueName: "c", at: .tail, registeringSyncTag: "c")
                #expect(pushed.size == index + 1)
            }
            // After the first, which makes the queue known, each one is written in this task.
            #expect(database.directPushCounts.written == 19)
            var ids: Set<Int64> = []
            var maybeStored = 0
            for index in 20..<220 {
                let push = Task { try await database.pushEntry(entry(index), queueName: "c", at: .tail, registeringSyncTag: "c") }
                if !index.isMultiple(of: 3) {
                    // Cancelled at varied moments of the push: before, during the wait for a
                    // connection, during the statement.
                    for _ in 0..<(index % 7) { await Task.yield() }
                }
                push.cancel()
                do {
                    ids.insert(try await push.value.id)
                } catch let error as BackgroundSyncError where error.message.contains("may be stored") {
                    maybeStored += 1
                }
            }
            let stored = try await database.entries(queueName: "c", state: .pending)
            let storedIDs = Set(stored.map(\.id))
            #expect(ids.isSubset(of: storedIDs))
            #expect(stored.count >= 20 + ids.count && stored.count <= 20 + ids.count + maybeStored)
            #expect(ids.count + maybeStored == 200)
            // In queue order, the entries are in the order of their pushes.
            let indexes = stored.sorted { $0.position < $1.position }.compactMap { entry in
                entry.requestData.url.split(separator: "/").last?.split(separator: "?").first.flatMap { Int($0) }
            }
            #expect(indexes.count == stored.count && indexes == indexes.sorted())
        }
    }

    /// Pushes count their entries themselves; any other insert (the code of an older version in
    /// the fleet) is counted by the trigger, and a schema written by that older version keeps its
    /// counts through the upgrade, which adds no version an older version would refuse.
    @Test func sizesStayRightAcrossTheUpgradeAndWithOlderWriters() async throws {
        let server = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: server.url)
        configuration.schema = uniqueSchema("counted")
        let schema = configuration.schema
        var logger = Logger(label: "test.postgres")
        logger.logLevel = .warning
        let olderPush = """
            INSERT INTO \(schema).entry(queue_name, position, url, method, headers, timeout_interval, cache_policy,
            handles_cookies, allows_cellular, queued_at) VALUES ('q', nextval('\(schema).tail_position'), 'http://older.example/',
            'POST', '{}', 60, 0, true, true, 0)
            """
        try await PostgresQueueDatabase.withDatabase(configuration, logger: logger) { database in
            for index in 0..<3 { _ = try await database.pushEntry(entry(index), queueName: "q", at: .tail, registeringSyncTag: "t") }
        }
        // The schema as the version before this one left it, with an entry that version pushed.
        _ = try await query(server, """
            DROP TRIGGER entry_inserted ON \(schema).entry; ALTER TABLE \(schema).entry DROP COLUMN counted;
            CREATE TRIGGER entry_inserted AFTER INSERT ON \(schema).entry FOR EACH ROW EXECUTE FUNCTION \(schema).count_entry();
            \(olderPush)
            """)
        #expect(try await query(server, "SELECT string_agg(version, ',') FROM \(schema).schema_migration") == "v1")
        try await PostgresQueueDatabase.withDatabase(configuration, logger: logger) { database in
            #expect(try await database.countEntries(queueName: "q", state: .pending) == 4)
            let pushed = try await database.pushEntry(entry(3), queueName: "q", at: .tail, registeringSyncTag: "t")
            #expect(pushed.size == 5)
            let batch = try await withThrowingTaskGroup(of: PushedEntry.self) { group in
                for index in 4..<20 {
                    group.addTask { try await database.pushEntry(entry(index), queueName: "q", at: .tail, registeringSyncTag: "t") }
                }
                return try await group.reduce(into: [PushedEntry]()) { $0.append($1) }
            }
            #expect(Set(batch.map(\.size)) == Set(6...21))
            _ = try await query(server, olderPush)
            #expect(try await database.countEntries(queueName: "q", state: .pending) == 22)
            #expect(try await database.entries(queueName: "q", state: .pending).count == 22)
            #expect(try await query(server, "SELECT count(*) FROM \(schema).entry WHERE counted") == "17")
        }
    }

    /// An entry the server cannot store (a NUL character in its URL) fails alone, with the
    /// server's error; the pushes around it still share their commits.
    @Test func anEntryTheServerRefusesFailsAlone() async throws {
        try await withStore { database, server, schema in
            _ = try await database.pushEntry(entry(0), queueName: "q", at: .tail, registeringSyncTag: nil)
            let results = try await withThrowingTaskGroup(of: (Int, Result<PushedEntry, any Error>).self) { group in
                for index in 1...32 {
                    group.addTask {
                        var pushed = entry(index)
                        if index == 20 { pushed.requestData.url = "https://batch.example/\u{0}" }
                        return (index, await Result {
                            try await database.pushEntry(pushed, queueName: "q", at: .tail, registeringSyncTag: "t")
                        })
                    }
                }
                var results: [Int: Result<PushedEntry, any Error>] = [:]
                for try await (index, result) in group { results[index] = result }
                return results
            }
            for (index, result) in results {
                switch result {
                case .success: #expect(index != 20, "the entry with a NUL was stored")
                case .failure(let error):
                    #expect(index == 20, "push \(index) failed: \(error)")
                    #expect(error is BackgroundSyncError)
                }
            }
            #expect(try await database.entries(queueName: "q", state: .pending).count == 32)
            let transactions = Int(try await query(server, "SELECT count(DISTINCT xmin::text) FROM \(schema).entry")) ?? 32
            #expect(transactions < 20, "\(transactions) transactions for 32 pushes")
        }
    }

    /// A store that stops while its producers keep pushing (a service retrying every failure)
    /// stops: the pushes waiting to be written fail, and no new batch starts.
    @Test func aStoreStopsWhileProducersKeepPushing() async throws {
        let server = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: server.url)
        configuration.schema = uniqueSchema("batch")
        var logger = Logger(label: "test.postgres")
        logger.logLevel = .critical
        let database = try PostgresQueueDatabase(configuration: configuration, logger: logger)
        // When run() returned.
        let running = Task {
            _ = await Result { try await database.run() }
            return ContinuousClock.now
        }
        _ = try await database.pushEntry(entry(0), queueName: "q", at: .tail, registeringSyncTag: nil)
        let stopped = Box(false)
        let (failures, stopTime) = try await withThrowingTaskGroup(of: Int.self) { group in
            for producer in 0..<16 {
                group.addTask {
                    var failures = 0
                    let giveUp = ContinuousClock.now + .seconds(15)
                    while !stopped.current, ContinuousClock.now < giveUp {
                        do {
                            _ = try await database.pushEntry(entry(producer), queueName: "q", at: .tail, registeringSyncTag: "t")
                        } catch {
                            failures += 1
                            await Task.yield()  // as a service retrying would: no thread held
                        }
                    }
                    return failures
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            let cancelledAt = ContinuousClock.now
            running.cancel()
            let stopTime = await running.value - cancelledAt
            stopped.withLock { $0 = true }
            var failures = 0
            for try await count in group { failures += count }
            return (failures, stopTime)
        }
        #expect(stopTime < .seconds(10), "the store took \(stopTime) to stop")
        #expect(failures > 0)
    }
}
