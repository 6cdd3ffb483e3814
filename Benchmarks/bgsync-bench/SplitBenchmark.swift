import BackgroundSync
import Foundation
import GRDB
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A diagnostic, not a figure (`--only=split`): one durable push taken apart, layer by layer, each
/// against the raw insert in the same run, to show where the enqueue gap is.
struct SplitBenchmark {
    let quick: Bool
    let freshPath: (String) -> String

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        let count = quick ? 300 : 1500
        let enqueue = EnqueueBenchmark(quick: quick, freshPath: freshPath)
        var rates: [String: [Double]] = [:]
        for _ in 0..<5 {
            rates["split_raw_insert_per_s", default: []].append(try await enqueue.rawInsertRate(count: count))
            rates["split_queue_schema_sql_per_s", default: []].append(try await schemaSQLRate(count: count))
            rates["split_insert_entry_per_s", default: []].append(try await insertEntryRate(count: count))
            rates["split_push_request_per_s", default: []].append(try await enqueue.queueRate(count: count, producers: 1))
        }
        let keys = ["split_raw_insert_per_s", "split_queue_schema_sql_per_s", "split_insert_entry_per_s", "split_push_request_per_s"]
        for key in keys {
            log(String(format: "%-34@ %7.0f /s  ratio %.2f", key as NSString, median(rates[key]!),
                       medianRatio(rates[key]!, rates[keys[0]]!)))
        }
        return keys.map { ($0, median(rates[$0]!)) }
    }

    /// The statements a push runs, on the queue's own schema, straight through GRDB.
    func schemaSQLRate(count: Int) async throws -> Double {
        let path = freshPath("schema")
        _ = try SQLiteQueueDatabase(path: path)
        let pool = try EnqueueBenchmark.fullSyncPool(path: path)
        let headers = #"{"content-type":"application/json","idempotency-key":"00000000-0000-0000-0000-000000000000"}"#
        let url = EnqueueBenchmark.url.absoluteString
        let body = EnqueueBenchmark.body
        // Warmed up like the figures' databases (see `EnqueueBenchmark.warmUp`).
        return try await warmedRate(count: count, warmUp: EnqueueBenchmark.warmUp) {
            try await pool.write { db in
                var tail: Int64 = 0
                if let row = try Row.fetchOne(
                    db.cachedStatement(sql: "SELECT headPosition, tailPosition, pendingCount FROM queue WHERE name = ?"),
                    arguments: ["bench"]) {
                    tail = row[1]
                } else {
                    try db.cachedStatement(sql: "INSERT INTO queue(name) VALUES (?)").execute(arguments: ["bench"])
                }
                let position = tail + 1
                try db.cachedStatement(sql: """
                    INSERT INTO entry(queueName, position, url, method, headers, body, settings, timestamp, metadata,
                        idempotencyKey, sealedSecrets)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """).execute(arguments: [
                        "bench", position, url, "POST", headers, body, nil, Date().timeIntervalSince1970, nil,
                        "00000000-0000-4000-8000-000000000000", nil,
                    ])
                try db.cachedStatement(
                    sql: "INSERT INTO syncRegistration(tag, registeredAt) VALUES (?, ?) ON CONFLICT(tag) DO NOTHING"
                ).execute(arguments: ["bench", Date().timeIntervalSince1970])
            }
        }
    }

    /// `SQLiteQueueDatabase.pushEntry` alone, with an already captured request.
    func insertEntryRate(count: Int) async throws -> Double {
        let database = try SQLiteQueueDatabase(path: freshPath("insert"))
        let data = StorableRequest.RequestData(
            url: EnqueueBenchmark.url.absoluteString, method: "POST",
            headers: ["content-type": "application/json"], body: EnqueueBenchmark.body)
        return try await warmedRate(count: count, warmUp: EnqueueBenchmark.warmUp) {
            _ = try await database.pushEntry(
                UnidentifiedQueueStoreEntry(requestData: data, idempotencyKey: "00000000-0000-4000-8000-000000000000"),
                queueName: "bench", at: .tail, registeringSyncTag: "bench")
        }
    }
}
