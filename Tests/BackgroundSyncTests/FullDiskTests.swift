import BackgroundSync
import ChildProcesses
import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A database on a 2 MiB file system (`tmpfs`, mounted by the test: it needs root, which CI has).
@Suite(
    "A full disk", .serialized, .timeLimit(.minutes(3)),
    .enabled(if: TinyFileSystem.canMount, "needs root to mount a 2 MiB tmpfs; CI runs as root"))
struct FullDiskTests {
    let disk: TinyFileSystem
    var path: String { disk.folder.appendingPathComponent("queue.sqlite").path }

    init() throws {
        disk = try TinyFileSystem()
    }

    /// Pushes 900-byte requests until the disk is full; returns the ids pushed and the error.
    private func fill(_ queue: Queue, url: URL) async throws -> (ids: [Int64], error: BackgroundSyncError) {
        var ids: [Int64] = []
        while true {
            do {
                ids.append(try await queue.pushRequest(postRequest(url, body: String(repeating: "x", count: 900))))
            } catch let error as BackgroundSyncError {
                return (ids, error)
            }
        }
    }

    @Test func aFullDiskIsAStorageFailureAndDeletingStillWorks() async throws {
        let queue = try Queue(name: "posts", database: try SQLiteQueueDatabase(path: path))
        let (ids, error) = try await fill(queue, url: URL(string: "http://127.0.0.1:9/posts")!)
        #expect(ids.count > 500)
        #expect(error.code == .storage)
        #expect(error.description.contains("the disk is full") && error.message.contains("free space"), "\(error.description)")
        // Every id a push returned is stored.
        #expect(try await queue.size() == ids.count)

        let enqueue = try await bgsync(["enqueue", "http://127.0.0.1:9/posts", "--queue", "posts", "-d", String(repeating: "y", count: 900), "--db", path])
        #expect(enqueue.status == 4, "\(enqueue.stderr)")
        #expect(enqueue.stderr.contains("the disk is full"), "\(enqueue.stderr)")
        #expect(enqueue.stderr.split(separator: "\n").count == 1)

        // Not a byte left: deleting one dead letter, the dead letters, then everything still works.
        try disk.fillUp()
        #expect(try await bgsync(["set-aside", "\(ids[0])", "--db", path]).status == 0)
        #expect(try await bgsync(["set-aside", "\(ids[1])", "--db", path]).status == 0)
        try disk.fillUp()
        let delete = try await bgsync(["delete", "\(ids[0])", "--yes", "--db", path])
        #expect(delete.status == 0, "\(delete.stderr)")
        let dead = try await bgsync(["purge", "--dead", "--yes", "--db", path])
        #expect(dead.stdout == "deleted 1 dead letters\n", "\(dead.stderr)")
        try disk.fillUp()
        let purge = try await bgsync(["purge", "--queue", "posts", "--yes", "--db", path])
        #expect(purge.stdout == "deleted \(ids.count - 2) entries\n", "\(purge.stderr)")
        let queues = try await bgsync(["queues", "--json", "--db", path])
        #expect(queues.stdout.contains(#""pending" : 0"#), "\(queues.stdout)")
    }

    @Test func aQueueDrainsAsSoonAsALittleSpaceComesBack() async throws {
        let server = try RecordingServer()
        // 600 KiB held by another file while the queue fills the rest of the disk.
        try disk.write("other", bytes: 600 << 10)
        let database = try SQLiteQueueDatabase(path: path)
        let queue = try Queue(name: "posts", database: database)
        let (ids, _) = try await fill(queue, url: server.url)
        try disk.fillUp()
        // 300 KiB come back.
        try disk.remove("other")
        try disk.write("other", bytes: 300 << 10)
        try await queue.replayRequests()
        #expect(server.received.current.count == ids.count)
        #expect(try await queue.size() == 0)
        // And the freed room takes new entries again.
        _ = try await queue.pushRequest(postRequest(server.url, body: "after"))
    }
}

/// A 2 MiB tmpfs mounted on a new folder, unmounted when the value goes away.
final class TinyFileSystem: Sendable {
    let folder: URL

    static let canMount: Bool = {
        guard getuid() == 0, let probe = try? TinyFileSystem() else { return false }
        _ = probe
        return true
    }()

    init() throws {
        folder = URL(fileURLWithPath: "/tmp").appendingPathComponent("bgsync-tiny-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        guard Self.run("/bin/mount", ["-t", "tmpfs", "-o", "size=2m,mode=0777", "tmpfs", folder.path]) == 0 else {
            try? FileManager.default.removeItem(at: folder)
            throw CocoaError(.fileWriteNoPermission)
        }
    }

    deinit {
        _ = Self.run("/bin/umount", ["-l", folder.path])
        try? FileManager.default.removeItem(at: folder)
    }

    /// Writes a file of `bytes` bytes (real blocks, not a sparse file).
    func write(_ name: String, bytes: Int) throws {
        try Data(count: bytes).write(to: folder.appendingPathComponent(name))
    }

    func remove(_ name: String) throws {
        try FileManager.default.removeItem(at: folder.appendingPathComponent(name))
    }

    /// Takes every free byte, in a new file.
    func fillUp() throws {
        let name = "filler-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: folder.appendingPathComponent(name).path, contents: nil)
        let handle = try FileHandle(forWritingTo: folder.appendingPathComponent(name))
        defer { try? handle.close() }
        var chunk = 64 << 10
        while chunk >= 512 {
            do { try handle.write(contentsOf: Data(count: chunk)) } catch { chunk /= 2 }
        }
    }

    private static func run(_ tool: String, _ arguments: [String]) -> Int32 {
        guard let process = try? ChildProcess(tool, arguments) else { return -1 }
        return process.terminationStatus
    }
}
