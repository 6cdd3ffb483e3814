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
        let count = quick ? 300 : 1500
        // Baseline and subject alternate, five rounds, and each ratio is the median of the rounds'
        // ratios: the two sides of a ratio are measured back to back, so a change in the disk's
        // fsync speed or in what else the machine runs moves both alike.
        var raw: [Double] = []
        var single: [Double] = []
        var sixteen: [Double] = []
        for _ in 0..<5 {
            raw.append(try await rawInsertRate(count: count))
            single.append(try await queueRate(count: count, producers: 1))
            sixteen.append(try await queueRate(count: count * 4, producers: 16))
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

    /// The bare baseline: GRDB, WAL, `synchronous=FULL`, one INSERT of the same columns per transaction.
    func rawInsertRate(count: Int) async throws -> Double {
        let pool = try Self.fullSyncPool(path: freshPath("raw"))
        try await pool.write { db in
            try db.execute(sql: """
                CREATE TABLE entry (id INTEGER PRIMARY KEY AUTOINCREMENT, queueName TEXT NOT NULL,
                position INTEGER NOT NULL, url TEXT NOT NULL, method TEXT NOT NULL, headers TEXT NOT NULL,
                body BLOB, timestamp DOUBLE NOT NULL)
                """)
        }
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

    func queueRate(count: Int, producers: Int) async throws -> Double {
        let database = try SQLiteQueueDatabase(path: freshPath("queue-\(producers)"))
        let queue = try Queue(name: "bench", database: database, syncManager: SyncManager())
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

extension Duration {
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

/// The middle value.
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

/// The median of the rounds' ratios `subject[i] / baseline[i]`.
func medianRatio(_ subject: [Double], _ baseline: [Double]) -> Double {
    median(zip(subject, baseline).map { $0 / $1 })
}
