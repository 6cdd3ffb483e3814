import BackgroundSync
import BackgroundSyncPostgres
import BackgroundSyncAsyncHTTPClient
import Foundation
import Logging
import LoopbackHTTPServer
import PostgresNIO
import PostgresTestServer
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The PostgreSQL store against a server the benchmark starts (`fsync` on, `synchronous_commit`
/// on): durable enqueue against a raw single-row `INSERT` per transaction, 16 producers against
/// one, a fleet of 4 worker processes against 1 draining a concurrent queue from a server that
/// holds each request 20 ms, and the wake-up latency of an idle service when another instance
/// queues.
struct PostgresBenchmark {
    let quick: Bool

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        guard PostgresTestServer.unavailableReason == nil else {
            log("postgres: skipped (\(PostgresTestServer.unavailableReason ?? ""))")
            return []
        }
        let server = try PostgresTestServer(durable: true)
        var results: [(String, Double)] = []
        var logger = Logger(label: "bench.postgres")
        logger.logLevel = .error
        let url = server.url + "?sslmode=disable"
        try await PostgresQueueDatabase.withDatabase(.init(url: url + "&schema=bench_enqueue"), logger: logger) { database in
            results += try await enqueue(database, url: url, log: log)
        }
        results += try await fleet(url: url + "&schema=bench_fleet", log: log)
        try await PostgresQueueDatabase.withDatabase(.init(url: url + "&schema=bench_wake"), logger: logger) { worker in
            try await PostgresQueueDatabase.withDatabase(.init(url: url + "&schema=bench_wake"), logger: logger) { producer in
                results += try await wakeUp(worker: worker, producer: producer, log: log)
            }
        }
        return results
    }

    // MARK: Enqueue

    private func enqueue(_ database: PostgresQueueDatabase, url: String, log: (String) -> Void) async throws -> [(String, Double)] {
        let operations = quick ? 300 : 2000
        let client = PostgresClient(configuration: try PostgresQueueDatabase.Configuration(url: url).rawClientConfiguration())
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            // The baseline stores the same request (URL, method, header fields, body, time) in a
            // table of its own with a primary key, one row per statement.
            _ = try await client.query("""
                CREATE TABLE raw_request (id bigserial PRIMARY KEY, url text NOT NULL, method text NOT NULL,
                headers text NOT NULL, body bytea, queued_at float8 NOT NULL)
                """)
            let single = try Queue(name: "single", database: database)
            let sixteen = try Queue(name: "sixteen", database: database)
            let body = EnqueueBenchmark.body
            let headers = #"{"content-type":"application/json"}"#
            let rawInsert = { @Sendable in
                _ = try await client.query("""
                    INSERT INTO raw_request (url, method, headers, body, queued_at)
                    VALUES (\(EnqueueBenchmark.url.absoluteString), 'POST', \(headers), \(body), \(Date().timeIntervalSince1970))
                    """)
            }
            for index in 0..<50 {
                try await rawInsert()
                try await single.pushRequest(EnqueueBenchmark.request(index))
            }
            let (rawRate, queueRate) = try await interleavedRates(
                count: operations, { _ in try await rawInsert() },
                { index in try await single.pushRequest(EnqueueBenchmark.request(index)) })
            // 16 producers against 1, in alternating blocks; the same for the raw insert, which
            // shows what the machine allows.
            var (oneSeconds, sixteenSeconds) = (0.0, 0.0)
            var (rawOneSeconds, rawSixteenSeconds) = (0.0, 0.0)
            let blocks = quick ? 4 : 12
            let (oneBlock, sixteenBlock) = (40, 640)
            for block in 0..<blocks {
                let sixteenRun = {
                    try await timed {
                        try await withThrowingTaskGroup(of: Void.self) { producers in
                            for producer in 0..<16 {
                                producers.addTask {
                                    for index in 0..<(sixteenBlock / 16) {
                                        try await sixteen.pushRequest(EnqueueBenchmark.request(producer * 1000 + index))
                                    }
                                }
                            }
                            try await producers.waitForAll()
                        }
                    }.seconds
                }
                let rawSixteenRun = {
                    try await timed {
                        try await withThrowingTaskGroup(of: Void.self) { producers in
                            for _ in 0..<16 {
                                producers.addTask { for _ in 0..<(sixteenBlock / 16) { try await rawInsert() } }
                            }
                            try await producers.waitForAll()
                        }
                    }.seconds
                }
                if block.isMultiple(of: 2) {
                    sixteenSeconds += try await sixteenRun()
                    rawSixteenSeconds += try await rawSixteenRun()
                }
                oneSeconds += try await timed {
                    for index in 0..<oneBlock { try await single.pushRequest(EnqueueBenchmark.request(index)) }
                }.seconds
                rawOneSeconds += try await timed { for _ in 0..<oneBlock { try await rawInsert() } }.seconds
                if !block.isMultiple(of: 2) {
                    rawSixteenSeconds += try await rawSixteenRun()
                    sixteenSeconds += try await sixteenRun()
                }
            }
            let oneRate = Double(blocks * oneBlock) / oneSeconds
            let sixteenRate = Double(blocks * sixteenBlock) / sixteenSeconds
            let rawSpeedup = rawOneSeconds / rawSixteenSeconds * Double(sixteenBlock) / Double(oneBlock)
            log(String(format: "postgres enqueue: raw INSERT %.0f/s, push %.0f/s; 16 producers %.0f/s, 1 producer %.0f/s",
                rawRate, queueRate, sixteenRate, oneRate))
            return [
                ("postgres_enqueue_ratio_vs_raw_insert", queueRate / rawRate),
                ("postgres_enqueue_16_producers_speedup", sixteenRate / oneRate),
                ("postgres_raw_16_producers_speedup", rawSpeedup),
            ]
        }
    }

    // MARK: Fleet

    /// Entries of one concurrent queue drained by `workers` processes with 4 in flight each.
    private func fleet(url: String, log: (String) -> Void) async throws -> [(String, Double)] {
        let entries = quick ? 240 : 1600
        let http = LoopbackHTTPServer { _ in .respond(.text("ok"), delay: .milliseconds(20)) }
        _ = try http.start()
        defer { http.stop() }
        var logger = Logger(label: "bench.postgres")
        logger.logLevel = .error
        var seconds: [Int: Double] = [:]
        for workers in [1, 4] {
            try await PostgresQueueDatabase.withDatabase(.init(url: url), logger: logger) { database in
                let queue = try Queue(name: "fleet", database: database)
                _ = try await database.deleteEntries(queueName: nil, state: nil)
                for index in 0..<entries {
                    try await queue.pushRequest(EnqueueBenchmark.request(index).with(url: http.baseURL.appendingPathComponent("fleet")))
                }
            }
            seconds[workers] = try await drain(url: url, workers: workers)
            log(String(format: "postgres fleet: %d entries, %d worker(s) with 4 in flight each: %.2f s", entries, workers, seconds[workers] ?? 0))
        }
        return [("postgres_fleet_4_workers_speedup", (seconds[1] ?? 0) / (seconds[4] ?? 1))]
    }

    /// Starts `workers` child processes on the store, lets them replay once all are connected,
    /// and returns the seconds until the last one is done.
    private func drain(url: String, workers: Int) async throws -> Double {
        let children = try (0..<workers).map { _ in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
            process.arguments = ["--postgres-worker-child", url, "fleet", "4"]
            let input = Pipe()
            let output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            // Foundation's `waitUntilExit` spins on a thread without a run loop: the end is
            // reported by the termination handler instead.
            let (exited, exit) = AsyncStream.makeStream(of: Void.self)
            process.terminationHandler = { _ in exit.finish() }
            try process.run()
            return (process, input, output, exited)
        }
        // Each says "ready" once connected; "go" starts them together.
        for (_, _, output, _) in children {
            _ = output.fileHandleForReading.availableData
        }
        let start = ContinuousClock.now
        for (_, input, _, _) in children { input.fileHandleForWriting.write(Data("go\n".utf8)) }
        for (process, _, _, exited) in children {
            for await _ in exited {}
            guard process.terminationStatus == 0 else {
                throw BackgroundSyncError(.storage, "a fleet worker failed with status \(process.terminationStatus)")
            }
        }
        return (ContinuousClock.now - start).seconds
    }

    /// The child side of ``drain(url:workers:)``: replays `queue` with `inFlight` entries in flight
    /// until nothing is left.
    static func workerChild(url: String, queue name: String, inFlight: Int) async throws {
        var logger = Logger(label: "bench.postgres")
        logger.logLevel = .error
        try await PostgresQueueDatabase.withDatabase(.init(url: url), logger: logger) { database in
            var options = QueueOptions()
            options.maxConcurrentReplays = inFlight
            // Through AsyncHTTPClient, the transport for Linux services.
            let queue = try Queue(name: name, options: options, database: database, transport: AsyncHTTPClientTransport())
            FileHandle.standardOutput.write(Data("ready\n".utf8))
            _ = readLine()
            // Entries another worker holds are skipped by one replay: replay until none is left.
            while try await database.countEntries(queueName: name, state: .pending) > 0 {
                try await queue.replayRequests()
            }
        }
    }

    // MARK: Wake-up

    /// The time from a push on one instance to the request reaching the server, sent by an idle
    /// service on another instance; the median of the samples.
    private func wakeUp(
        worker: PostgresQueueDatabase, producer: PostgresQueueDatabase, log: (String) -> Void
    ) async throws -> [(String, Double)] {
        let samples = quick ? 15 : 50
        let received = AsyncStream.makeStream(of: ContinuousClock.Instant.self)
        let http = LoopbackHTTPServer { _ in
            received.continuation.yield(.now)
            return .respond(.text("ok"))
        }
        _ = try http.start()
        defer { http.stop() }
        let queue = try Queue(name: "wake", database: worker)
        let service = SyncService(queues: [queue], configuration: .init(connectivity: nil, pollInterval: nil))
        var latencies: [Double] = []
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await service.run() }
            try await Task.sleep(for: .milliseconds(300))
            var arrivals = received.stream.makeAsyncIterator()
            let data = try StorableRequest.fromRequest(
                EnqueueBenchmark.request(0).with(url: http.baseURL.appendingPathComponent("wake"))).toObject()
            for _ in 0..<samples {
                let start = ContinuousClock.now
                _ = try await producer.pushEntry(
                    UnidentifiedQueueStoreEntry(requestData: data), queueName: "wake", at: .tail, registeringSyncTag: queue.syncTag)
                guard let arrival = await arrivals.next() else { break }
                latencies.append((arrival - start).seconds * 1000)
                // The service deletes it and goes idle again.
                try await Task.sleep(for: .milliseconds(50))
            }
            group.cancelAll()
        }
        let middle = median(latencies)
        log(String(format: "postgres wake-up: push on one instance to send by an idle service on another, median %.1f ms", middle))
        return [("postgres_wakeup_median_ms", middle)]
    }
}

extension URLRequest {
    /// The request sent to another URL.
    func with(url: URL) -> URLRequest {
        var request = self
        request.url = url
        return request
    }
}

extension PostgresQueueDatabase.Configuration {
    /// A plain PostgresNIO client configuration to the same server, for the baseline.
    func rawClientConfiguration() -> PostgresClient.Configuration {
        .init(host: host, port: port, username: username, password: password, database: database, tls: .disable)
    }
}
