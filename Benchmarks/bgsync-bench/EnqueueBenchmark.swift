import BackgroundSync
import Foundation
import GRDB
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Durable enqueue: the queue against a raw GRDB insert (one row per transaction, same WAL and
/// `synchronous=FULL`), and 16 concurrent producers against one.
struct EnqueueBenchmark {
    let quick: Bool
    let freshPath: (String) -> String

    static let url = URL(string: "https://api.example.com/posts")!
    static let body = Data(#"{"title":"A post written offline","content":"Lorem ipsum dolor sit amet, consectetur."}"#.utf8)

    static func request(_ index: Int) -> URLRequest {
        var request = URLRequest(url: url)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = body
        return request
    }

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        // The disk's fsync time drifts by tens of percent from one tenth of a second to the next,
        // so the two sides of a ratio are interleaved finely rather than measured one after the
        // other: what the disk does at any moment falls on both alike. Each side keeps its own
        // database, warmed up first (see `warmUp`).
        let (operations, blocks) = quick ? (600, 8) : (4000, 30)
        let rawPool = try await Self.rawPool(path: freshPath("raw"))
        let singleQueue = try Self.queue(path: freshPath("queue-1"))
        let sixteenQueue = try Self.queue(path: freshPath("queue-16"))
        _ = try await rawInsertRate(rawPool, count: Self.warmUp)
        _ = try await queueRate(singleQueue, count: Self.warmUp, producers: 1)
        _ = try await queueRate(sixteenQueue, count: Self.warmUp, producers: 16)

        // 1 producer against the raw insert, interleaved one operation each.
        let requests = (0..<operations).map(Self.request)
        let (rawRate, singleRate) = try await interleavedRates(
            count: operations,
            { index in try await Self.rawInsert(rawPool, index: index) },
            { index in try await singleQueue.pushRequest(requests[index]) })

        // 16 producers against 1: alternating blocks of some 20 ms each (16 concurrent pushes
        // cannot be interleaved one by one with single ones); the speedup is the ratio of the
        // two sides' total rates.
        let (singleBlock, sixteenBlock) = (80, 1280)
        var pairedSingle = (count: 0, seconds: 0.0)
        var sixteen = (count: 0, seconds: 0.0)
        for block in 0..<blocks {
            let sixteenFirst = block.isMultiple(of: 2)
            if sixteenFirst {
                sixteen.seconds += Double(sixteenBlock) / (try await queueRate(sixteenQueue, count: sixteenBlock, producers: 16))
            }
            pairedSingle.seconds += Double(singleBlock) / (try await queueRate(singleQueue, count: singleBlock, producers: 1))
            if !sixteenFirst {
                sixteen.seconds += Double(sixteenBlock) / (try await queueRate(sixteenQueue, count: sixteenBlock, producers: 16))
            }
            pairedSingle.count += singleBlock
            sixteen.count += sixteenBlock
        }
        let sixteenRate = Double(sixteen.count) / sixteen.seconds
        let pairedSingleRate = Double(pairedSingle.count) / pairedSingle.seconds

        log(String(format: "raw GRDB insert, 1 row per transaction: %.0f rows/s", rawRate))
        log(String(format: "pushRequest, 1 producer:              %.0f entries/s (%.0f in the blocks paired with 16)", singleRate, pairedSingleRate))
        log(String(format: "pushRequest, 16 producers:            %.0f entries/s", sixteenRate))
        return [
            ("raw_insert_per_s", rawRate),
            ("enqueue_1_producer_per_s", singleRate),
            ("enqueue_16_producers_per_s", sixteenRate),
            ("enqueue_ratio_vs_raw_insert", singleRate / rawRate),
            ("group_commit_speedup", sixteenRate / pairedSingleRate),
        ]
    }

    /// Writes made, untimed, on a new database before it is measured: enough for the WAL to reach
    /// its checkpoint size (1,000 pages) and start over. Until then every commit also grows the
    /// `-wal` file, and the `fdatasync` writes the file's new size too: a database measured from
    /// scratch is slower the fewer pages its commits write, which favours neither side fairly.
    static let warmUp = 600

    /// The bare baseline's database: GRDB, WAL, `synchronous=FULL`, the same columns as an entry.
    static func rawPool(path: String) async throws -> DatabasePool {
        let pool = try Self.fullSyncPool(path: path)
        try await pool.write { db in
            try db.execute(sql: """
                CREATE TABLE entry (id INTEGER PRIMARY KEY AUTOINCREMENT, queueName TEXT NOT NULL,
                position INTEGER NOT NULL, url TEXT NOT NULL, method TEXT NOT NULL, headers TEXT NOT NULL,
                body BLOB, timestamp DOUBLE NOT NULL)
                """)
        }
        return pool
    }

    /// The bare baseline on a new, warmed-up database.
    func rawInsertRate(count: Int) async throws -> Double {
        let pool = try await Self.rawPool(path: freshPath("raw"))
        _ = try await rawInsertRate(pool, count: Self.warmUp)
        return try await rawInsertRate(pool, count: count)
    }

    /// The bare baseline: one INSERT per transaction.
    func rawInsertRate(_ pool: DatabasePool, count: Int) async throws -> Double {
        let start = ContinuousClock.now
        for index in 0..<count {
            try await Self.rawInsert(pool, index: index)
        }
        return Double(count) / (ContinuousClock.now - start).seconds
    }

    /// One insert of the bare baseline, in its own transaction.
    static func rawInsert(_ pool: DatabasePool, index: Int) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO entry(queueName, position, url, method, headers, body, timestamp) VALUES (?,?,?,?,?,?,?)",
                arguments: ["bench", index, rawURL, "POST", rawHeaders, body, Date().timeIntervalSince1970])
        }
    }

    private static let rawURL = url.absoluteString
    private static let rawHeaders = #"{"content-type":"application/json","idempotency-key":"00000000-0000-0000-0000-000000000000"}"#

    /// A GRDB pool whose writer commits with `synchronous=FULL`, like the queue's. It must be set
    /// after opening: GRDB sets `NORMAL` when it enables WAL, after `prepareDatabase` ran.
    static func fullSyncPool(path: String) throws -> DatabasePool {
        let pool = try DatabasePool(path: path)
        try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
        return pool
    }

    static func queue(path: String) throws -> Queue {
        try Queue(name: "bench", database: try SQLiteQueueDatabase(path: path), syncManager: SyncManager())
    }

    /// Pushes on a new, warmed-up database.
    func queueRate(count: Int, producers: Int) async throws -> Double {
        let queue = try Self.queue(path: freshPath("queue-\(producers)"))
        _ = try await queueRate(queue, count: Self.warmUp, producers: producers)
        return try await queueRate(queue, count: count, producers: producers)
    }

    /// `count` pushes by `producers` concurrent tasks.
    func queueRate(_ queue: Queue, count: Int, producers: Int) async throws -> Double {
        let perProducer = count / producers
        // The app builds its requests; the figure is the queue's, so they are built beforehand.
        let requests = (0..<producers).map { _ in (0..<perProducer).map(Self.request) }
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for producer in 0..<producers {
                group.addTask {
                    for request in requests[producer] {
                        try await queue.pushRequest(request)
                    }
                }
            }
            try await group.waitForAll()
        }
        return Double(perProducer * producers) / (ContinuousClock.now - start).seconds
    }
}
