import BackgroundSync
import Foundation
import GRDB
import LoopbackHTTPServer
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Builds the large databases the figures need, fast: the queue's own schema (created by
/// `SQLiteQueueDatabase`), then rows inserted in one transaction with plain SQL.
enum Fixtures {
    /// A database at `path` whose queue `name` holds `count` pending POSTs to `url`.
    static func fill(path: String, queue name: String, url: String, count: Int) throws {
        _ = try SQLiteQueueDatabase(path: path)  // creates the schema
        let writer = try DatabaseQueue(path: path)
        try writer.write { db in
            try db.execute(sql: "INSERT INTO queue(name) VALUES (?) ON CONFLICT(name) DO NOTHING", arguments: [name])
            let start = try Int64.fetchOne(db, sql: "SELECT tailPosition FROM queue WHERE name = ?", arguments: [name]) ?? 0
            try db.execute(
                sql: """
                    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
                    INSERT INTO entry(queueName, position, url, method, headers, body, timestamp, idempotencyKey)
                    SELECT ?, ? + i, ?, 'POST', '{"content-type":"application/json"}',
                        CAST(printf('{"title":"post %d","content":"Lorem ipsum dolor sit amet"}', i) AS BLOB),
                        CAST(strftime('%s','now') AS REAL), lower(hex(randomblob(16)))
                    FROM n
                    """,
                arguments: [count, name, start, url])
            try db.execute(sql: "UPDATE queue SET tailPosition = ? WHERE name = ?", arguments: [start + Int64(count), name])
        }
        try writer.close()
        // The file's pages on disk before anything is measured: the kernel would otherwise write
        // them back in the middle of the measured pushes, whose fsyncs would wait for them.
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try handle.synchronize()
        try handle.close()
    }

    /// Closes a database and removes its files.
    static func remove(_ database: SQLiteQueueDatabase, path: String) {
        try? database.close()
        for suffix in ["", "-wal", "-shm", ".reserve"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    /// A loopback server that answers every request at once with a 201.
    static func server() throws -> LoopbackHTTPServer {
        let server = LoopbackHTTPServer { _ in .respond(.init(status: 201, body: Data(#"{"ok":true}"#.utf8))) }
        try server.start()
        return server
    }
}

/// The peak resident memory of this process, from `/proc/self/status` (VmHWM), in kilobytes.
func peakResidentKilobytes() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
    }
    return 0
}
