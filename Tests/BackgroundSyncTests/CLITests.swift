import BackgroundSync
import BackgroundSyncTesting
import ChildProcesses
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The output of one run of the built `bgsync` binary.
struct CLIRun {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs the built `bgsync` with `arguments` (stdin is /dev/null: not a terminal), waiting for it
/// off the cooperative pool.
func bgsync(_ arguments: [String], environment: [String: String] = [:]) async throws -> CLIRun {
    try await offCooperativePool { try bgsyncBlocking(arguments, environment: environment) }
}

private func bgsyncBlocking(_ arguments: [String], environment: [String: String]) throws -> CLIRun {
    var env = ProcessInfo.processInfo.environment
    env["BGSYNC_DB"] = nil
    env.merge(environment) { $1 }
    return try runChild(builtProductURL("bgsync"), arguments, environment: env)
}

/// Runs a program to its end (stdin is /dev/null) and returns its status and output. Blocks: call
/// it through ``offCooperativePool(_:)`` from a test.
func runChild(_ executable: URL, _ arguments: [String], environment: [String: String]) throws -> CLIRun {
    let run = try ChildProcess.run(executable.path, arguments, environment: environment)
    return CLIRun(
        status: run.status, stdout: String(decoding: run.stdout, as: UTF8.self),
        stderr: String(decoding: run.stderr, as: UTF8.self))
}

@Suite("bgsync commands, run as a binary", .timeLimit(.minutes(2)))
struct CLITests {
    let folder: URL
    let db: String

    init() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        db = folder.appendingPathComponent("queue.sqlite").path
    }

    private func run(_ arguments: [String]) async throws -> CLIRun {
        try await bgsync(arguments + ["--db", db])
    }

    @Test func enqueueListShowAndQueues() async throws {
        let first = try await run(["enqueue", "https://api.example.com/posts", "--queue", "posts",
                             "-H", "Content-Type: application/json", "-H", "Authorization: Bearer secret-token",
                             "--store-secrets", "-d", #"{"title":"Hello"}"#])
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout == "1\n")
        let second = try await run(["enqueue", "https://api.example.com/comments", "-X", "PUT", "-d", "x"])
        #expect(second.stdout == "2\n")

        let list = try await run(["list"])
        #expect(list.status == 0)
        #expect(list.stdout.contains("POST    https://api.example.com/posts"))
        #expect(list.stdout.contains("PUT     https://api.example.com/comments"))

        let show = try await run(["show", "1"])
        #expect(show.stdout.contains("POST https://api.example.com/posts"))
        #expect(show.stdout.contains("authorization: (masked)"))
        #expect(!show.stdout.contains("secret-token"))
        #expect(show.stdout.contains(#"{"title":"Hello"}"#))

        let queues = try await run(["queues", "--json"])
        let parsed = try JSONSerialization.jsonObject(with: Data(queues.stdout.utf8)) as? [[String: Any]]
        #expect(parsed?.map { $0["name"] as? String } == ["default", "posts"])
        #expect(parsed?.allSatisfy { $0["pending"] as? Int == 1 && $0["dead"] as? Int == 0 && $0.keys.contains("oldestAgeSeconds") } == true)

        let listed = try JSONSerialization.jsonObject(with: Data(try await run(["list", "--json"]).stdout.utf8)) as? [[String: Any]]
        #expect(Set(listed?.first?.keys.map { $0 } ?? []) == [
            "id", "queue", "state", "method", "url", "queuedAt", "ageSeconds", "attempts", "nextAttemptAt",
            "lastFailure", "idempotencyKey", "metadata",
        ])
        let shown = try JSONSerialization.jsonObject(with: Data(try await run(["show", "1", "--json"]).stdout.utf8)) as? [String: Any]
        #expect((shown?["headers"] as? [String: String])?["authorization"] == "(masked)")
        #expect(shown?["body"] as? String == #"{"title":"Hello"}"#)
    }

    @Test func sendDeliversOrQueues() async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            request.path == "/missing" ? .respond(.text("no", status: 404)) : .respond(.text("ok", status: 201))
        }
        let sent = try await run(["send", server.url.absoluteString, "-d", "now"])
        #expect(sent.status == 0)
        #expect(sent.stdout == "sent: HTTP 201\n")

        let refused = try await run(["send", server.server.baseURL.appendingPathComponent("missing").absoluteString, "-d", "x"])
        #expect(refused.status == 5, "refused for good: not retryable")
        #expect(refused.stdout.contains("HTTP 404 (not queued)"))

        let port = server.server.port
        server.server.stop()
        let queued = try await run(["send", server.url.absoluteString, "-d", "later", "--queue", "posts"])
        #expect(queued.status == 0)
        #expect(queued.stdout.hasPrefix("queued as entry"))
        let strict = try await run(["send", server.url.absoluteString, "-d", "later2", "--queue", "posts", "--fail-on-queue"])
        #expect(strict.status == 3)

        try server.server.start(port: port)
        let replay = try await run(["replay"])
        #expect(replay.status == 0, "\(replay.stdout)\(replay.stderr)")
        #expect(replay.stdout.contains("posts: delivered #1"))
        #expect(replay.stdout.contains("posts: drained, 2 delivered"))
        #expect(server.bodies == ["now", "x", "later", "later2"])
    }

    @Test func replayStopsOnARetryableFailureWithStatusOne() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("down", status: 503)) }
        _ = try await run(["enqueue", server.url.absoluteString, "-d", "a", "--queue", "q"])
        let replay = try await run(["replay", "--queue", "q"])
        #expect(replay.status == 1)
        #expect(replay.stdout.contains("q: stopped, 1 left"))
        let list = try await run(["list", "--queue", "q"])
        #expect(list.stdout.contains("HTTP 503"))
    }

    @Test func syncDispatchesTheTagOfAQueue() async throws {
        let server = try RecordingServer()
        _ = try await run(["enqueue", server.url.absoluteString, "-d", "synced", "--queue", "posts"])
        let sync = try await run(["sync", "--tag", "background-sync:posts"])
        #expect(sync.status == 0, "\(sync.stderr)")
        #expect(sync.stdout.contains("succeeded; 0 entries left"))
        #expect(server.bodies == ["synced"])
    }

    @Test func deadLettersCanBeRequeuedAndPurged() async throws {
        let server = try RecordingServer()
        let accept = Box(false)
        server.respond { _, _ in accept.current ? .respond(.text("ok")) : .respond(.text("bad", status: 422)) }
        for body in ["a", "b", "c"] {
            _ = try await run(["enqueue", server.url.absoluteString, "-d", body, "--queue", "q"])
        }
        #expect(try await run(["replay"]).stdout.contains("3 dead-lettered"))
        let dead = try await run(["list", "--dead"])
        #expect(dead.stdout.contains("HTTP 422"))

        #expect(try await run(["requeue", "2"]).stdout == "requeued entry 2 in 'q'\n")
        #expect(try await run(["requeue", "2"]).status == 2, "no longer a dead letter")
        #expect(try await run(["purge", "--dead", "--yes"]).stdout == "deleted 2 dead letters\n")
        accept.withLock { $0 = true }
        #expect(try await run(["replay"]).status == 0)
        #expect(server.bodies.suffix(1) == ["b"])

        for body in ["d", "e"] { _ = try await run(["enqueue", "http://127.0.0.1:9/x", "-d", body, "--queue", "q"]) }
        #expect(try await run(["purge", "--queue", "q"]).stdout == "deleted 2 entries\n", "no terminal: no question")
        #expect(try await run(["requeue", "--all-dead"]).stdout == "requeued 0 dead letters\n")
    }

    @Test func runStopsOnSIGTERMOnlyAfterTheSendInFlightAndLosesNothing() async throws {
        let server = try RecordingServer()
        let (arrived, arrival) = AsyncStream.makeStream(of: Int.self)
        let release = DispatchSemaphore(value: 0)
        server.respond { _, index in
            if index == 0 {
                arrival.yield(index)
                _ = release.wait(timeout: .now() + 20)
            }
            return .respond(.text("ok", status: 201))
        }
        for body in ["a", "b", "c"] {
            _ = try await run(["enqueue", server.url.absoluteString, "-d", body, "--queue", "q"])
        }
        let stderr = Pipe()
        let daemon = try ChildProcess(
            builtProductURL("bgsync"),
            ["run", "--db", db, "--no-connectivity-monitor", "--poll-interval", "0.2", "--log-level", "debug"],
            standardError: .pipe(stderr))
        var log = lines(of: stderr).makeAsyncIterator()

        var arrivals = arrived.makeAsyncIterator()
        #expect(await arrivals.next() == 0, "the daemon sends the first entry; the server holds it")
        daemon.terminate()
        // Release the held request only once the daemon is shutting down: it must wait for it.
        while let line = await log.next(), !line.contains("Shutting down") {}
        release.signal()
        if try await awaitExit(daemon, within: 30, "bgsync run after SIGTERM") {
            #expect(daemon.terminationStatus == 0)
        }

        let delivered = Set(server.bodies)
        #expect(delivered.contains("a"), "the send in flight finished")
        let left = try await SQLiteQueueDatabase(path: db).entries(queueName: "q", state: .pending)
        let queued = Set(left.map { String(decoding: $0.requestData.body ?? Data(), as: UTF8.self) })
        #expect(delivered.union(queued) == ["a", "b", "c"], "every entry delivered or still queued")
        #expect(delivered.isDisjoint(with: queued), "a delivered entry is not left queued")
    }

    @Test func runCancelsASendThatOutlastsTheShutdownTimeoutAndKeepsItsEntry() async throws {
        let server = try RecordingServer()
        let (arrived, arrival) = AsyncStream.makeStream(of: Int.self)
        server.respond { _, index in
            arrival.yield(index)
            return .hang(.seconds(60))
        }
        _ = try await run(["enqueue", server.url.absoluteString, "-d", "held", "--queue", "q"])
        let daemon = try ChildProcess(builtProductURL("bgsync"), [
            "run", "--db", db, "--no-connectivity-monitor", "--poll-interval", "0.2", "--shutdown-timeout", "1",
        ])
        var arrivals = arrived.makeAsyncIterator()
        #expect(await arrivals.next() == 0, "the daemon sends the entry; the server holds it for a minute")
        daemon.terminate()
        // It stops after the shutdown timeout, not after the server's minute.
        let stopped = try await exited(daemon, within: 30)
        #expect(stopped, "bgsync run still runs 30 s after SIGTERM with --shutdown-timeout 1")
        if !stopped {
            daemon.send(SIGKILL)
            daemon.waitUntilExit()
        }
        #expect(daemon.terminationStatus == 0)
        let left = try await SQLiteQueueDatabase(path: db).entries(queueName: "q", state: .pending)
        #expect(left.map { String(decoding: $0.requestData.body ?? Data(), as: UTF8.self) } == ["held"], "the cancelled send's entry stays")
    }

    @Test func showAndReplayTellWhatTheServerAnswered() async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            request.path.hasSuffix("/auth") ? .respond(.text("who are you?", status: 401))
                : .respond(.text("server says no", status: 503))
        }
        _ = try await run(["enqueue", server.url.absoluteString, "-d", "a", "--queue", "q"])
        let replay = try await run(["replay", "--json"])
        #expect(replay.status == 1)
        let outcomes = try JSONSerialization.jsonObject(with: Data(replay.stdout.utf8)) as? [[String: Any]]
        #expect(outcomes?.count == 1)
        #expect(outcomes?.first?["queue"] as? String == "q")
        #expect(outcomes?.first?["result"] as? String == "stopped")
        #expect(outcomes?.first?["left"] as? Int == 1)
        #expect((outcomes?.first?["message"] as? String)?.contains("HTTP 503") == true)
        #expect(Set(outcomes?.first?.keys.map { $0 } ?? []) == ["queue", "result", "delivered", "deadLettered", "expired", "left", "message"])

        let shown = try await run(["show", "1"])
        #expect(shown.stdout.contains("last failure (httpStatus): HTTP 503"), "\(shown.stdout)")
        #expect(shown.stdout.contains("server's answer: server says no"))
        let json = try JSONSerialization.jsonObject(with: Data(try await run(["show", "1", "--json"]).stdout.utf8)) as? [String: Any]
        let failure = json?["lastFailure"] as? [String: Any]
        #expect(failure?["kind"] as? String == "httpStatus")
        #expect(failure?["status"] as? Int == 503)
        #expect(failure?["responseExcerpt"] as? String == "server says no")

        _ = try await run(["enqueue", server.server.baseURL.appendingPathComponent("auth").absoluteString, "-d", "b", "--queue", "auth"])
        let paused = try await run(["replay", "--queue", "auth"])
        #expect(paused.status == 1)
        #expect(paused.stdout.contains("wants credentials"), "\(paused.stdout)")
        #expect(!paused.stdout.contains("resume()"), "no library call named to a command-line user")
    }

    @Test func aStuckEntryIsSetAsideOrDeleted() async throws {
        let server = try RecordingServer()
        _ = try await run(["enqueue", "http://127.0.0.1:9/gone", "-d", "stuck", "--queue", "q"])
        _ = try await run(["enqueue", server.url.absoluteString, "-d", "good", "--queue", "q"])
        #expect(try await run(["replay"]).status == 1, "the head blocks the queue")
        let aside = try await run(["set-aside", "1", "--reason", "host is gone"])
        #expect(aside.status == 0, "\(aside.stderr)")
        #expect(aside.stdout == "set entry 1 of 'q' aside as a dead letter\n")
        #expect(try await run(["replay"]).stdout.contains("q: drained, 1 delivered"))
        #expect(server.bodies == ["good"])
        let dead = try await run(["list", "--dead"])
        #expect(dead.stdout.contains("set aside"), "\(dead.stdout)")
        #expect(try await run(["set-aside", "1"]).status == 2, "already a dead letter")
        let deleted = try await run(["delete", "1"])
        #expect(deleted.status == 0, "\(deleted.stderr)")
        #expect(deleted.stdout.hasPrefix("deleted dead letter 1 "))
        let missing = try await run(["delete", "1"])
        #expect(missing.status == 2)
        #expect(missing.stderr == "bgsync: no entry with id 1\n")
    }

    /// Another process holds the database's write lock: not bad input, a storage failure (4).
    @Test func aLockedDatabaseIsAStorageFailure() async throws {
        _ = try await run(["enqueue", "https://a.example/x", "-d", "a", "--queue", "q"])
        let (input, output) = (Pipe(), Pipe())
        let holder = try ChildProcess("/usr/bin/env", [
            "python3", "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
                + "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
            db,
        ], standardInput: .pipe(input), standardOutput: .pipe(output))
        defer {
            try? input.fileHandleForWriting.close()
            holder.waitUntilExit()
        }
        let locked = output.fileHandleForReading.readData(ofLength: 7)
        #expect(String(decoding: locked, as: UTF8.self) == "locked\n")
        let result = try await run(["enqueue", "https://a.example/y", "-d", "b", "--queue", "q", "--busy-timeout", "0.2"])
        #expect(result.status == 4, "\(result.stderr)")
        #expect(result.stderr.contains("locked by another process"), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1)
    }

    @Test func helpReadsLikeAWellKeptTool() async throws {
        let help = try await bgsync(["--help"])
        #expect(help.status == 0)
        for command in [
            "enqueue", "send", "queues", "list", "show", "replay", "sync", "requeue", "set-aside", "delete", "purge", "run",
            "demo",
        ] {
            #expect(help.stdout.contains("  \(command) "), "\(command) is listed")
            let page = try await bgsync(["help", command])
            #expect(page.status == 0)
            #expect(page.stdout.contains("OVERVIEW:"))
            if command != "demo" {
                #expect(page.stdout.contains("Example"), "\(command) help shows an example")
            }
        }
    }
}

/// Bad input: one line on stderr naming the problem, exit status 2 (4 for a database that cannot be
/// used), no stack trace, the database untouched.
@Suite("bgsync bad input", .timeLimit(.minutes(2)))
struct CLIBadInputTests {
    enum FileSetup: Sendable { case none, directory, text, corrupt, newerSchema, valid }

    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var setup: FileSetup
        var arguments: [String]
        var message: String
        /// 2 for bad input, 4 for a database that cannot be used.
        var status: Int32 = 2
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "invalid URL", setup: .valid, arguments: ["enqueue", "not a url"], message: "invalid URL 'not a url'"),
        Case(name: "non-http URL", setup: .valid, arguments: ["enqueue", "ftp://example.com/x"], message: "scheme 'ftp'"),
        Case(name: "missing data file", setup: .valid, arguments: ["enqueue", "https://a.example/", "--data-file", "/nonexistent/body.json"], message: "cannot read the data file '/nonexistent/body.json'"),
        Case(name: "bad header", setup: .valid, arguments: ["enqueue", "https://a.example/", "-H", "NoColon"], message: "invalid header 'NoColon'"),
        Case(name: "unknown entry id", setup: .valid, arguments: ["show", "424242"], message: "no entry with id 424242"),
        Case(name: "unknown queue", setup: .valid, arguments: ["list", "--queue", "ghost"], message: "no queue named 'ghost'"),
        Case(name: "database is a directory", setup: .directory, arguments: ["list"], message: "is a directory, not a database file"),
        Case(name: "not a database", setup: .text, arguments: ["list"], message: "is not a SQLite database"),
        Case(name: "corrupt database", setup: .corrupt, arguments: ["queues"], message: "is damaged (database disk image is malformed)", status: 4),
        Case(name: "newer schema", setup: .newerSchema, arguments: ["enqueue", "https://a.example/", "-d", "x"], message: "newer version of swift-background-sync", status: 4),
        Case(name: "missing database", setup: .none, arguments: ["list"], message: "no database at"),
    ]

    @Test(arguments: cases)
    func badInputIsOneLineWithItsExitStatus(_ test: Case) async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-bad-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        var path = folder.appendingPathComponent("queue.sqlite").path
        switch test.setup {
        case .none:
            break
        case .directory:
            path = folder.path
        case .text:
            try Data(String(repeating: "plain text, not SQLite\n", count: 300).utf8).write(to: URL(fileURLWithPath: path))
        case .valid, .corrupt, .newerSchema:
            do {
                let database = try SQLiteQueueDatabase(path: path)
                try await QueueStore(queueName: "q", database: database).pushEntry(
                    UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/", method: "POST")))
            }
            // Move the WAL into the main file, so that the file's bytes are the whole database.
            let newer = test.setup == .newerSchema ? " INSERT INTO grdb_migrations VALUES ('v99');" : ""
            try sqlite(path, "PRAGMA wal_checkpoint(TRUNCATE);" + newer)
            if test.setup == .corrupt {
                // Keep the 100-byte header, scramble the rest of the first page (the schema).
                let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
                try handle.seek(toOffset: 100)
                handle.write(Data((0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }))
                try handle.close()
            }
        }
        let before = FileManager.default.contents(atPath: path)
        let result = try await bgsync(test.arguments + ["--db", path])
        #expect(result.status == test.status, "\(result.stdout)\(result.stderr)")
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "one line: \(result.stderr)")
        #expect(result.stderr.hasPrefix("bgsync: "))
        #expect(result.stderr.contains(test.message), "\(result.stderr)")
        #expect(!result.stderr.contains("Fatal error") && !result.stderr.contains("Stack dump"))
        #expect(FileManager.default.contents(atPath: path) == before, "the database is untouched")
    }
}
