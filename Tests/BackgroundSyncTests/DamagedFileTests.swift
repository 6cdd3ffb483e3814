import BackgroundSync
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A database file with a damaged page: reads report it, no write goes into it, and salvage copies
/// what can be read into a new file, leaving the damaged one as it was.
@Suite("A damaged database file", .timeLimit(.minutes(2)))
struct DamagedFileTests {
    let folder: URL
    let path: String

    init() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-damaged-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        path = folder.appendingPathComponent("queue.sqlite").path
    }

    /// 200 entries in two queues, each with its idempotency key and metadata, one with a failed
    /// attempt; returns them as stored, in id order.
    private func fill() async throws -> [QueueStoreEntry] {
        let database = try SQLiteQueueDatabase(path: path)
        for index in 1...200 {
            let body = #"{"n":\#(index),"pad":"\#(String(repeating: "x", count: 300))"}"#
            let entry = UnidentifiedQueueStoreEntry(
                requestData: .init(
                    url: "http://127.0.0.1:9/posts/\(index)", method: "POST", headers: ["idempotency-key": "key-\(index)"],
                    body: Data(body.utf8)),
                metadata: ["n": "\(index)"], idempotencyKey: "key-\(index)")
            _ = try await database.pushEntry(entry, queueName: index % 4 == 0 ? "comments" : "posts", at: .tail, registeringSyncTag: nil)
        }
        var entries: [QueueStoreEntry] = []
        for queue in ["posts", "comments"] { entries += try await database.entries(queueName: queue, state: .pending) }
        try database.close()
        return entries.sorted { $0.id < $1.id }
    }

    /// 1 KiB of (seeded) random bytes written over the start of the middle page of the file (its
    /// header: damage SQLite sees whatever the page holds).
    private func damage() throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: size / 2 / 4096 * 4096)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let bytes = (0..<1024).map { _ -> UInt8 in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
        try handle.write(contentsOf: Data(bytes))
    }

    private func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// A damaged file deleted: the files created next at its path take writes, and none gets the
    /// damaged file's inode (this process keeps the damaged file open), so no other process that
    /// creates a file meanwhile gets a file this process would refuse as damaged.
    @Test func newFilesAtTheDeletedDamagedFilesPathTakeWritesAndNotItsInode() async throws {
        _ = try await fill()
        try damage()
        let damaged = try SQLiteQueueDatabase(path: path)
        await #expect(throws: BackgroundSyncError.self) { _ = try await damaged.entries(queueName: "posts", state: .pending) }
        try damaged.close()
        let inode = Self.inode(path)
        let push = UnidentifiedQueueStoreEntry(requestData: .init(url: "http://127.0.0.1:9/posts/new", method: "POST"))
        // Without the damaged file held open, most file systems give its inode to one of the
        // next files created.
        for _ in 0..<20 {
            for suffix in ["", "-wal", "-shm", ".damaged"] { try? FileManager.default.removeItem(atPath: path + suffix) }
            let fresh = try SQLiteQueueDatabase(path: path)
            #expect(Self.inode(path) != inode, "a new file got the damaged file's inode")
            _ = try await fresh.pushEntry(push, queueName: "posts", at: .tail, registeringSyncTag: nil)
            #expect(try await fresh.countEntries(queueName: "posts", state: .pending) == 1)
            try fresh.close()
        }
    }

    /// An instance that meets the damage after a salvaged copy was moved over its file (against
    /// the README's advice to stop it first) refuses writes into the file it has open, and leaves
    /// the copy now at the path alone: no marker names the copy, and a new instance writes into it.
    @Test func damageMetAfterACopyWasMovedInPlaceMarksOnlyTheOpenedFile() async throws {
        _ = try await fill()
        try damage()
        let old = try SQLiteQueueDatabase(path: path)
        // Its reader connection opens now, on the damaged file (a later one would open the copy).
        #expect(try await old.queueNames().sorted() == ["comments", "posts"])
        let copy = folder.appendingPathComponent("copy.sqlite").path
        _ = try await offCooperativePool { try SQLiteQueueDatabase.salvage(from: path, to: copy) }
        #expect(rename(copy, path) == 0)
        await #expect(throws: BackgroundSyncError.self) {
            for queue in ["posts", "comments"] { _ = try await old.entries(queueName: queue, state: .pending) }
        }
        let push = UnidentifiedQueueStoreEntry(requestData: .init(url: "http://127.0.0.1:9/posts/new", method: "POST"))
        await #expect(throws: BackgroundSyncError.self) {
            _ = try await old.pushEntry(push, queueName: "posts", at: .tail, registeringSyncTag: nil)
        }
        try old.close()
        #expect(!FileManager.default.fileExists(atPath: path + ".damaged"))
        let fresh = try SQLiteQueueDatabase(path: path)
        _ = try await fresh.pushEntry(push, queueName: "posts", at: .tail, registeringSyncTag: nil)
        try fresh.close()
    }

    private static func inode(_ path: String) -> UInt64 {
        var info = stat()
        return stat(path, &info) == 0 ? UInt64(info.st_ino) : 0
    }

    @Test func noWriteGoesIntoADamagedFileAndSalvageCopiesWhatCanBeRead() async throws {
        let original = try await fill()
        #expect(!FileManager.default.fileExists(atPath: path + "-wal"), "closing checkpoints the WAL")
        try damage()

        // A read meets the damage and says what to do.
        let database = try SQLiteQueueDatabase(path: path)
        let read = await #expect(throws: BackgroundSyncError.self) {
            for queue in ["posts", "comments"] { _ = try await database.entries(queueName: queue, state: .pending) }
        }
        #expect(read?.code == .storage)
        #expect(read?.message.contains("is damaged") == true)
        #expect(read?.message.contains("bgsync salvage --db \(path)") == true, "\(read?.message ?? "")")
        // From then on, no write goes in: not through this instance, not from another process.
        let push = UnidentifiedQueueStoreEntry(requestData: .init(url: "http://127.0.0.1:9/posts/new", method: "POST"))
        await #expect(throws: BackgroundSyncError.self) {
            _ = try await database.pushEntry(push, queueName: "posts", at: .tail, registeringSyncTag: nil)
        }
        try database.close()
        let damagedBytes = try bytes(path)
        let enqueue = try await bgsync(["enqueue", "http://127.0.0.1:9/posts/new", "--queue", "posts", "-d", "x", "--db", path])
        #expect(enqueue.status == 4)
        #expect(enqueue.stderr.contains("is damaged") && enqueue.stderr.contains("salvage"), "\(enqueue.stderr)")
        #expect(try bytes(path) == damagedBytes)

        // Salvage: a new file with what can be read; the damaged one untouched.
        let salvaged = folder.appendingPathComponent("salvaged.sqlite").path
        let run = try await bgsync(["salvage", "--db", path, "--to", salvaged, "--json"])
        #expect(run.status == 0, "\(run.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        let (count, unreadable, setAside) = (report["salvaged"] as? Int ?? -1, report["unreadable"] as? Int ?? -1, report["setAside"] as? Int ?? -1)
        #expect(count + unreadable == 200, "\(report)")
        #expect(count >= 150 && count < 200, "one page of a 200-entry file is damaged: \(report)")
        #expect(try bytes(path) == damagedBytes)
        #expect(try await bgsync(["salvage", "--db", path, "--to", salvaged]).status == 2, "salvage never overwrites")

        // Every entry copied is the one stored, with its queue, position, key and metadata;
        // one with a field the damage garbled is a dead letter that says so.
        let copy = try SQLiteQueueDatabase(path: salvaged)
        var pending: [QueueStoreEntry] = []
        for queue in ["posts", "comments"] { pending += try await copy.entries(queueName: queue, state: .pending) }
        var dead: [QueueStoreEntry] = []
        for queue in try await copy.queueNames() { dead += try await copy.entries(queueName: queue, state: .dead) }
        #expect(pending.count + dead.count == count)
        #expect(dead.count == setAside)
        #expect(dead.allSatisfy { $0.lastFailure?.message.hasPrefix("salvaged from a damaged file") == true })
        let byID = Dictionary(uniqueKeysWithValues: original.map { ($0.id, $0) })
        for entry in pending {
            let stored = try #require(byID[entry.id])
            #expect(entry.queueName == stored.queueName && entry.requestData == stored.requestData)
            #expect(entry.idempotencyKey == stored.idempotencyKey && entry.metadata == stored.metadata)
            #expect(entry.position == stored.position && entry.attempts == stored.attempts)
        }

        // The salvaged file is a working queue: it replays in order, takes new entries after the
        // old ids, and replaces the damaged file (whose marker then no longer applies).
        let server = try RecordingServer()
        let posts = try Queue(
            name: "posts", options: QueueOptions(requestWillReplay: { request, _ in
                var request = request
                request.url = server.url.appendingPathComponent(request.url?.lastPathComponent ?? "")
                return request
            }), database: copy)
        try await posts.replayRequests()
        let sent = pending.filter { $0.queueName == "posts" }.sorted { $0.position < $1.position }
        #expect(server.received.current.map { $0.headers["idempotency-key"] } == sent.map(\.idempotencyKey))
        let next = try await copy.pushEntry(push, queueName: "posts", at: .tail, registeringSyncTag: nil)
        #expect(next.id > original.map(\.id).max() ?? 0)
        try copy.close()
        #expect(rename(salvaged, path) == 0)
        let replaced = try await bgsync(["enqueue", "http://127.0.0.1:9/posts/after", "--queue", "posts", "-d", "x", "--db", path])
        #expect(replaced.status == 0, "\(replaced.stderr)")
        #expect(!FileManager.default.fileExists(atPath: path + ".damaged"))
    }
}
