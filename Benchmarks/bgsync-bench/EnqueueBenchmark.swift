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
        // Baseline and subject alternate, in short rounds, and each ratio is the median of the
        // rounds' ratios: the two sides of a ratio are measured back to back, within a second, so a
        // change in the disk's fsync speed or in what else the machine runs moves both alike. Each
        // side keeps its database across rounds, warmed up first (see `warmUp`).
        let (count, rounds) = quick ? (300, 5) : (500, 15)
        let rawPool = try await Self.rawPool(path: freshPath("raw"))
        let singleQueue = try Self.queue(path: freshPath("queue-1"))
        let sixteenQueue = try Self.queue(path: freshPath("queue-16"))
        _ = try await rawInsertRate(rawPool, count: Self.warmUp)
        _ = try await queueRate(singleQueue, count: Self.warmUp, producers: 1)
        _ = try await queueRate(sixteenQueue, count: Self.warmUp, producers: 16)
        var raw: [Double] = []
        var single: [Double] = []
        var sixteen: [Double] = []
        for round in 0..<rounds {
            // Which of the pair goes first alternates: whatever the previous measurement leaves
            // behind (the disk still busy after the 16-producer burst) falls on each side alike.
            if round.isMultiple(of: 2) {
                raw.append(try await rawInsertRate(rawPool, count: count))
                single.append(try await queueRate(singleQueue, count: count, producers: 1))
            } else {
                single.append(try await queueRate(singleQueue, count: count, producers: 1))
                raw.append(try await rawInsertRate(rawPool, count: count))
            }
            sixteen.append(try await queueRate(sixteenQueue, count: count * 4, producers: 16))
        }
        let (rawRate, singleRate, sixteenRate) = (median(raw), median(single), median(sixteen))
        log(String(format: "raw GRDB insert, 1 row per transaction: %.0f rows/s", rawRate))
        log(String(format: "pushRequest, 1 producer:              %.0f entries/s", singleRate))
        log(String(format: "pushRequest, 16 producers:            %.0f entries/s", sixteenRate))
        return [
            ("raw_insert_per_s", rawRate),
            ("enqueue_1_producer_per_s", singleRate),
            ("enqueue_16_producers_per_s", sixteenRate),
            ("enqueue_ratio_vs_raw_insert", medianRatio(single, raw)),
            ("group_commit_speedup", medianRatio(sixteen, single)),
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
        let headers = #"{"content-type":"application/json","idempotency-key":"00000000-0000-0000-0000-000000000000"}"#
        let url = Self.url.absoluteString
        let body = Self.body
        let start = ContinuousClock.now
        for index in 0..<count {
            try await pool.write { db in
                try db.execute(
                    sql: "INSERT INTO entry(queueName, position, url, method, headers, body, timestamp) VALUES (?,?,?,?,?,?,?)",
                    arguments: ["bench", index, url, "POST", headers, body, Date().timeIntervalSince1970])
            }
        }
        return Double(count) / (ContinuousClock.now - start).seconds
    }

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
