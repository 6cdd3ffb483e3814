import BackgroundSync
import BackgroundSyncPostgres
import Foundation
import Logging
import PostgresNIO
import PostgresTestServer
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A diagnostic, not a figure (`--only=pgsplit`): one durable PostgreSQL push taken apart, layer by
/// layer, against the raw insert of `postgres_enqueue_ratio_vs_raw_insert`, on a server of its own.
/// The layers run one operation each in turn (the first one moving by one every round), 1,500
/// rounds, and each prints its mean time, the raw insert's time divided by it, and the CPU time and
/// context switches of this process (every thread) while it ran:
///
/// - `raw insert`: the figure's baseline (`PostgresClient.query`, an unnamed statement);
/// - `raw insert, prepared`: the same as a prepared statement;
/// - `push statement, prepared`: the store's push statement (the entry, the queue's count, the
///   registration, the size read) run by a bare `PostgresClient` as a prepared statement;
/// - `store pushEntry`: ``PostgresQueueDatabase/pushEntry(_:queueName:at:registeringSyncTag:)``;
/// - `Queue.pushRequest, request built`: a `Queue` push of a `URLRequest` built before timing;
/// - `Queue.pushRequest`: the figure's subject, which builds its `URLRequest` in the timed part;
/// - `raw insert, store's pool`: the baseline on a `PostgresClient` whose pool is set as the
///   store's (one connection kept open, no keep-alive): what those settings alone give a raw
///   insert.
///
/// `PGSPLIT_ONLY=N` (0 to 6, in the order above) runs layer N alone, back to back, and prints its
/// time, CPU time and context switches without a ratio. ``PerfControl`` records all the rounds.
struct PostgresSplitDiagnostic {
    let quick: Bool
    /// The layers' numbers, for `PGSPLIT_ONLY`.
    static let layers = 0..<7

    func run(log: (String) -> Void) async throws {
        guard PostgresTestServer.unavailableReason == nil else {
            log("pgsplit: skipped (\(PostgresTestServer.unavailableReason ?? ""))")
            return
        }
        let server = try PostgresTestServer(durable: true)
        var logger = Logger(label: "bench.pgsplit")
        logger.logLevel = .error
        let url = server.url + "?sslmode=disable"
        try await PostgresQueueDatabase.withDatabase(.init(url: url + "&schema=bench_split"), logger: logger) { database in
            let client = PostgresClient(configuration: try PostgresQueueDatabase.Configuration(url: url).rawClientConfiguration())
            var tuned = try PostgresQueueDatabase.Configuration(url: url).rawClientConfiguration()
            tuned.options.minimumConnections = 1
            tuned.options.keepAliveBehavior = nil
            let tunedClient = PostgresClient(configuration: tuned)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await client.run() }
                group.addTask { await tunedClient.run() }
                defer { group.cancelAll() }
                try await measure(database: database, client: client, tunedClient: tunedClient, log: log)
            }
        }
    }

    private func measure(database: PostgresQueueDatabase, client: PostgresClient, tunedClient: PostgresClient, log: (String) -> Void) async throws {
        _ = try await client.query("""
            CREATE TABLE raw_request (id bigserial PRIMARY KEY, url text NOT NULL, method text NOT NULL,
            headers text NOT NULL, body bytea, queued_at float8 NOT NULL)
            """)
        let queue = try Queue(name: "split", database: database)
        let request = EnqueueBenchmark.request(0)
        let captured = UnidentifiedQueueStoreEntry(
            requestData: .init(url: RawInsert.url, method: "POST", headers: PushStatement.headerFields, body: EnqueueBenchmark.body),
            idempotencyKey: PushStatement.key)
        let layers: [(String, @Sendable () async throws -> Void)] = [
            ("raw insert", {
                _ = try await client.query("""
                    INSERT INTO raw_request (url, method, headers, body, queued_at)
                    VALUES (\(RawInsert.url), 'POST', \(RawInsert.headers), \(EnqueueBenchmark.body), \(Date().timeIntervalSince1970))
                    """)
            }),
            ("raw insert, prepared", { for try await _ in try await client.execute(RawInsert()) {} }),
            ("push statement, prepared", { for try await _ in try await client.execute(PushStatement()) {} }),
            ("store pushEntry", {
                _ = try await database.pushEntry(captured, queueName: "split", at: .tail, registeringSyncTag: "split-sync")
            }),
            ("Queue.pushRequest, request built", { try await queue.pushRequest(request) }),
            ("Queue.pushRequest", { try await queue.pushRequest(EnqueueBenchmark.request(0)) }),
            ("raw insert, store's pool", {
                _ = try await tunedClient.query("""
                    INSERT INTO raw_request (url, method, headers, body, queued_at)
                    VALUES (\(RawInsert.url), 'POST', \(RawInsert.headers), \(EnqueueBenchmark.body), \(Date().timeIntervalSince1970))
                    """)
            }),
        ]
        for _ in 0..<100 {
            for layer in layers { try await layer.1() }
        }
        let rounds = quick ? 200 : 1500
        precondition(layers.count == Self.layers.count)
        let only = ProcessInfo.processInfo.environment["PGSPLIT_ONLY"].flatMap { Int($0) }
        var times = [Duration](repeating: .zero, count: layers.count)
        var cpu = [Double](repeating: 0, count: layers.count)
        var switches = [Double](repeating: 0, count: layers.count)
        try await PerfControl.recording {
            for round in 0..<rounds {
                for step in 0..<layers.count {
                    let index = (round + step) % layers.count
                    if let only, only != index { continue }
                    let (start, startCPU) = (ContinuousClock.now, CPUTime.now())
                    try await layers[index].1()
                    times[index] += ContinuousClock.now - start
                    let (used, switched) = CPUTime.now().perOperation(since: startCPU, count: 1)
                    cpu[index] += used
                    switches[index] += switched
                }
            }
        }
        for (index, layer) in layers.enumerated() where only == nil || only == index {
            let name = layer.0.padding(toLength: 34, withPad: " ", startingAt: 0)
            let (milliseconds, perCPU, perSwitches) = (
                times[index].seconds / Double(rounds) * 1000, cpu[index] / Double(rounds), switches[index] / Double(rounds))
            if only == nil {
                log(String(format: "pgsplit: %@ %.3f ms   raw insert / this %.3f   %3.0f µs CPU, %.1f context switches",
                           name, milliseconds, times[0].seconds / times[index].seconds, perCPU, perSwitches))
            } else {
                log(String(format: "pgsplit: %@ %.3f ms alone   %3.0f µs CPU, %.1f context switches",
                           name, milliseconds, perCPU, perSwitches))
            }
        }
    }
}

/// The raw insert of the baseline as a prepared statement.
private struct RawInsert: PostgresPreparedStatement {
    typealias Row = Int64
    static let name = "pgsplit_raw_insert"
    static let sql = "INSERT INTO raw_request (url, method, headers, body, queued_at) VALUES ($1, 'POST', $2, $3, $4) RETURNING id"
    static let url = EnqueueBenchmark.url.absoluteString
    static let headers = #"{"content-type":"application/json"}"#

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(Self.url)
        bindings.append(Self.headers)
        try bindings.append(EnqueueBenchmark.body)
        bindings.append(Date().timeIntervalSince1970)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Int64 { try row.decode(Int64.self) }
}

/// The store's statement for a push at the tail of a known queue, written out here with the
/// schema named (the library's own is internal): the sync registration under its shared lock,
/// the entry, its count in the queue's shard, the size read.
private struct PushStatement: PostgresPreparedStatement {
    typealias Row = PostgresRow
    static let name = "pgsplit_push"
    static let key = "00000000-0000-0000-0000-000000000000"
    static let headerFields = ["content-type": "application/json", "idempotency-key": key]
    static let sql = """
        WITH inserted AS (
            INSERT INTO bench_split.entry(queue_name, position, counted, url, method, headers, body, timeout_interval,
                cache_policy, handles_cookies, allows_cellular, main_document_url, queued_at, metadata,
                idempotency_key, sealed_secrets, record_key, attempts, next_attempt_at, last_failure_kind,
                last_status, last_error, last_response_excerpt)
            VALUES ($1, nextval('bench_split.tail_position'), true, $4, 'POST', $5, $6, 60, 0, true, true, NULL, $3, NULL,
                $7, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL)
            RETURNING id, queue_name),
        bumped AS (
            UPDATE bench_split.queue_count SET pending = pending + 1 WHERE queue_name = $1 AND shard = pg_backend_pid() % 16
            RETURNING 1),
        counted AS (
            INSERT INTO bench_split.queue_count AS c (queue_name, shard, pending, dead)
            SELECT $1, pg_backend_pid() % 16, 1, 0 WHERE NOT EXISTS (SELECT FROM bumped)
            ON CONFLICT (queue_name, shard) DO UPDATE SET pending = c.pending + EXCLUDED.pending),
        registration AS (
            INSERT INTO bench_split.sync_registration(tag, registered_at) SELECT $2::text, $3::double precision
            WHERE pg_advisory_xact_lock_shared(hashtextextended('bgsync registration ' || $2::text, 0))::text = ''
            ON CONFLICT (tag) DO NOTHING)
        SELECT inserted.id, (SELECT coalesce(sum(pending), 0)::bigint FROM bench_split.queue_count WHERE queue_name = $1) + 1
        FROM inserted
        """

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append("split")
        bindings.append("split-sync")
        bindings.append(Date().timeIntervalSince1970)
        bindings.append(RawInsert.url)
        bindings.append(#"{"content-type":"application/json","idempotency-key":"\#(Self.key)"}"#)
        try bindings.append(EnqueueBenchmark.body)
        bindings.append(Self.key)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
}
