import BackgroundSync
import BackgroundSyncTesting
import ChildProcesses
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A child process is killed with SIGKILL in the middle of a replay or of a stream of pushes; the
/// database must still hold every entry that was not delivered.
@Suite("Crash safety with a killed child process", .serialized, .timeLimit(.minutes(2)))
struct CrashTests {
    let child = builtProductURL("BackgroundSyncTestChild")

    private func temporaryDatabasePath() throws -> (URL, String) {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-crash-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        return (folder, folder.appendingPathComponent("queue.sqlite").path)
    }

    private func startChild(_ arguments: [String], stdout: Pipe? = nil) throws -> ChildProcess {
        try ChildProcess(
            child, arguments, standardOutput: stdout.map { .pipe($0) } ?? .inherited, standardError: .inherited)
    }

    private func kill9(_ process: ChildProcess) {
        process.send(SIGKILL)
        process.waitUntilExit()
    }

    /// Fills a queue with `count` POSTs whose bodies are `post-<n>`, through a `Queue` (so each has an
    /// Idempotency-Key), then releases it.
    private func fill(path: String, queueName: String, url: URL, count: Int) async throws {
        let queue = try Queue(name: queueName, database: try SQLiteQueueDatabase(path: path))
        for index in 0..<count {
            try await queue.pushRequest(postRequest(url, body: "post-\(index)"))
        }
    }

    /// Replays what is left in-process and checks that every post reached the server, and that each
    /// post sent twice carried the same Idempotency-Key both times.
    private func finishAndCheck(path: String, queueName: String, server: RecordingServer, count: Int) async throws {
        server.respond { _, _ in .respond(.text("ok", status: 201)) }
        let database = try SQLiteQueueDatabase(path: path)
        let queue = try Queue(name: queueName, database: database)
        try await queue.replayRequests()
        #expect(try await queue.size() == 0)

        var keysByBody: [String: Set<String>] = [:]
        var timesByBody: [String: Int] = [:]
        for request in server.received.current {
            let body = String(decoding: request.body, as: UTF8.self)
            keysByBody[body, default: []].insert(request.headers["idempotency-key"] ?? "none")
            timesByBody[body, default: 0] += 1
        }
        #expect(Set(timesByBody.keys) == Set((0..<count).map { "post-\($0)" }), "every entry reached the server")
        #expect(keysByBody.values.allSatisfy { $0.count == 1 && !$0.contains("none") })
        #expect(timesByBody.values.allSatisfy { $0 <= 2 })
    }

    @Test func killedWhileTheServerHoldsARequestLosesNothing() async throws {
        let (folder, path) = try temporaryDatabasePath()
        defer { try? FileManager.default.removeItem(at: folder) }
        let server = try RecordingServer()
        let queueName = "crash-hold"
        let count = 200
        try await fill(path: path, queueName: queueName, url: server.url, count: count)

        let (reached, reachedContinuation) = AsyncStream.makeStream(of: Int.self)
        server.respond { _, index in
            if index == 49 {
                reachedContinuation.yield(index)
                return .hang(.seconds(60))
            }
            return .respond(.text("ok", status: 201))
        }
        let process = try startChild(["replay", path, queueName])
        var iterator = reached.makeAsyncIterator()
        #expect(await iterator.next() == 49)
        kill9(process)
        #expect(process.terminationReason == .uncaughtSignal)

        let database = try SQLiteQueueDatabase(path: path)
        let left = try await database.entries(queueName: queueName, state: .pending)
        // The one in flight is kept; of the 49 answered ones, those delivered since the last
        // lease (fewer than the batch: 8 entries, up to 64 while they go out fast) may be left,
        // to be sent again.
        #expect(left.count >= count - 49 && left.count < count - 49 + 64)
        let firstLeft = left.count - (count - 49)
        #expect(left.map { String(decoding: $0.requestData.body ?? Data(), as: UTF8.self) }
            == (49 - firstLeft..<count).map { "post-\($0)" })

        try await finishAndCheck(path: path, queueName: queueName, server: server, count: count)
        #expect(server.bodies.filter { $0 == "post-49" }.count == 2)
    }

    @Test(arguments: [7, 120, 199])
    func killedAtAnyMomentOfAReplayLosesNothing(killAfter: Int) async throws {
        let (folder, path) = try temporaryDatabasePath()
        defer { try? FileManager.default.removeItem(at: folder) }
        let server = try RecordingServer()
        let queueName = "crash-race"
        let count = 200
        try await fill(path: path, queueName: queueName, url: server.url, count: count)

        let (reached, reachedContinuation) = AsyncStream.makeStream(of: Int.self)
        server.respond { _, index in
            if index == killAfter { reachedContinuation.yield(index) }
            return .respond(.text("ok", status: 201))
        }
        let process = try startChild(["replay", path, queueName])
        var iterator = reached.makeAsyncIterator()
        _ = await iterator.next()
        // The child is killed while it reads this response, deletes the entry, or sends the next one.
        kill9(process)

        try await finishAndCheck(path: path, queueName: queueName, server: server, count: count)
    }

    @Test func killedWhilePushingKeepsEveryAcknowledgedEntry() async throws {
        let (folder, path) = try temporaryDatabasePath()
        defer { try? FileManager.default.removeItem(at: folder) }
        let pipe = Pipe()
        let process = try startChild(["push", path, "crash-push", "5000", "http://127.0.0.1:9/x"], stdout: pipe)
        let acknowledged: [Int64] = await withCheckedContinuation { continuation in
            Thread {
                var output = Data()
                var killed = false
                while true {
                    let chunk = pipe.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    output.append(chunk)
                    if !killed, output.split(separator: UInt8(ascii: "\n")).count >= 150 {
                        process.send(SIGKILL)
                        killed = true
                    }
                }
                process.waitUntilExit()
                let ids = String(decoding: output, as: UTF8.self)
                    .split(separator: "\n")
                    .compactMap { line in line.hasPrefix("pushed ") ? Int64(line.dropFirst(7)) : nil }
                continuation.resume(returning: ids)
            }.start()
        }
        #expect(process.terminationReason == .uncaughtSignal, "the child was killed before it finished")
        #expect(acknowledged.count >= 150)

        let database = try SQLiteQueueDatabase(path: path)
        let stored = try await database.entries(queueName: "crash-push", state: .pending)
        let storedIDs = Set(stored.map(\.id))
        #expect(acknowledged.allSatisfy(storedIDs.contains), "every push that returned is on disk")
        #expect(stored.count >= acknowledged.count)
        #expect(try await database.countEntries(queueName: "crash-push", state: .pending) == stored.count)
    }

    @Test(arguments: [1, 4])
    func twoProcessesReplayingOneFileSendEachEntryOnce(concurrency: Int) async throws {
        let (folder, path) = try temporaryDatabasePath()
        defer { try? FileManager.default.removeItem(at: folder) }
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("ok", status: 201), delay: .milliseconds(1)) }
        let queueName = "two-processes"
        let count = 200
        try await fill(path: path, queueName: queueName, url: server.url, count: count)

        let first = try startChild(["drain", path, queueName, "\(concurrency)"])
        let second = try startChild(["drain", path, queueName, "\(concurrency)"])
        // Both within 90 seconds, under the suite's time limit.
        let deadline = Date().addingTimeInterval(90)
        let firstEnded = try await awaitExit(first, within: 90, "the first drain")
        let secondEnded = try await awaitExit(second, within: max(deadline.timeIntervalSinceNow, 1), "the second drain")
        if firstEnded && secondEnded {
            #expect(first.terminationStatus == 0 && second.terminationStatus == 0)
        }

        let bodies = server.bodies
        #expect(bodies.count == count, "none sent twice")
        #expect(Set(bodies) == Set((0..<count).map { "post-\($0)" }), "every entry delivered")
        if concurrency == 1 {
            #expect(bodies == (0..<count).map { "post-\($0)" }, "an ordered queue stays in order across processes")
        }
        #expect(try await SQLiteQueueDatabase(path: path).countEntries(queueName: queueName, state: .pending) == 0)
    }
}
