import ChildProcesses
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A database file shared between users: one may read it without being able to write it, and
/// nothing a reader does keeps the owner from writing. The commands run as other users through
/// `setpriv`, which needs root (CI runs as root).
@Suite(
    "A database shared between users", .timeLimit(.minutes(2)),
    .enabled(if: getuid() == 0, "needs root to run bgsync as other users (setpriv); CI runs as root"))
struct SharedFileTests {
    static let owner: uid_t = 65534  // nobody
    static let reader: uid_t = 4242  // a user with no entry in /etc/passwd

    let folder: URL
    let db: String
    /// A copy of `bgsync` every user may run (the build folder may not be reachable to them).
    let binary: String

    init() throws {
        folder = URL(fileURLWithPath: "/tmp").appendingPathComponent("bgsync-shared-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        db = folder.appendingPathComponent("queue.sqlite").path
        binary = folder.appendingPathComponent("bgsync").path
        // Copied by `cp`, not in this process: a child another test spawns meanwhile would inherit
        // our open write descriptor, and exec of the copy would fail with "text file busy".
        let copy = try ChildProcess.run("/bin/cp", [builtProductURL("bgsync").path, binary])
        try #require(copy.status == 0, "cp failed: \(String(decoding: copy.stderr, as: UTF8.self))")
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: binary)
    }

    /// Runs `bgsync` as `uid` (its own group, no others), with the test's database.
    private func run(as uid: uid_t, _ arguments: [String]) async throws -> CLIRun {
        let (binary, db) = (binary, db)
        return try await offCooperativePool { try Self.runBlocking(binary: binary, db: db, as: uid, arguments) }
    }

    private static func runBlocking(binary: String, db: String, as uid: uid_t, _ arguments: [String]) throws -> CLIRun {
        try runChild(
            URL(fileURLWithPath: "/usr/bin/setpriv"),
            ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", binary] + arguments + ["--db", db],
            environment: ["PATH": "/usr/bin:/bin", "HOME": "/tmp"])
    }

    private func files() throws -> [String: uid_t] {
        var owners: [String: uid_t] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: folder.path) where name != "bgsync" {
            var info = stat()
            #expect(stat(folder.appendingPathComponent(name).path, &info) == 0)
            owners[name] = info.st_uid
        }
        return owners
    }

    private func expectReads(as uid: uid_t, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        for arguments in [["queues"], ["list"], ["show", "1"]] {
            let run = try await run(as: uid, arguments)
            #expect(run.status == 0, "\(arguments): \(run.stderr)", sourceLocation: sourceLocation)
            if arguments != ["queues"] {
                #expect(run.stdout.contains("http://127.0.0.1:9/posts"), sourceLocation: sourceLocation)
            }
        }
    }

    @Test func readCommandsWorkOnAFileTheUserCannotWrite() async throws {
        // The folder and the file belong to the owner; the reader may read the file, not write
        // either. Then the owner itself, with a 0400 file.
        try FileManager.default.setAttributes([.posixPermissions: 0o755, .ownerAccountID: Self.owner], ofItemAtPath: folder.path)
        let created = try await run(as: Self.owner, ["enqueue", "http://127.0.0.1:9/posts", "-d", "x"])
        #expect(created.status == 0, "\(created.stderr)")
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: db)
        try await expectReads(as: Self.reader)
        #expect(try files() == ["queue.sqlite": Self.owner, "queue.sqlite.reserve": Self.owner])
        try FileManager.default.setAttributes([.posixPermissions: 0o400], ofItemAtPath: db)
        try await expectReads(as: Self.owner)
        #expect(try files().values.allSatisfy { $0 == Self.owner })
        let write = try await run(as: Self.owner, ["enqueue", "http://127.0.0.1:9/posts", "-d", "y"])
        #expect(write.status == 4, "\(write.stderr)")
        #expect(write.stderr.contains("readonly") || write.stderr.contains("read-only"), "\(write.stderr)")
    }

    @Test func aReaderLeavesNothingTheOwnerCannotUse() async throws {
        // A folder everyone may write to: a reader's SQLite could create -wal and -shm files there.
        try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: folder.path)
        let created = try await run(as: Self.owner, ["enqueue", "http://127.0.0.1:9/posts", "-d", "x"])
        #expect(created.status == 0, "\(created.stderr)")
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: db)
        try await expectReads(as: Self.reader)
        #expect(try files() == ["queue.sqlite": Self.owner, "queue.sqlite.reserve": Self.owner], "the reader left files behind")
        let second = try await run(as: Self.owner, ["enqueue", "http://127.0.0.1:9/posts", "-d", "y"])
        #expect(second.status == 0, "\(second.stderr)")

        // While the owner's daemon holds the file open (its -wal and -shm exist, 0644): the reader
        // reads through them and the owner keeps them.
        let daemon = try ChildProcess(
            "/usr/bin/setpriv",
            ["--reuid=\(Self.owner)", "--regid=\(Self.owner)", "--clear-groups", binary, "run", "--db", db])
        defer {
            daemon.terminate()
            daemon.waitUntilExit()
        }
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline, try files().count < 4 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(try files() == [
            "queue.sqlite": Self.owner, "queue.sqlite-wal": Self.owner, "queue.sqlite-shm": Self.owner,
            "queue.sqlite.reserve": Self.owner,
        ])
        try await expectReads(as: Self.reader)
        #expect(try files().values.allSatisfy { $0 == Self.owner })
        let third = try await run(as: Self.owner, ["enqueue", "http://127.0.0.1:9/posts", "-d", "z"])
        #expect(third.status == 0, "\(third.stderr)")
    }
}
