import BackgroundSync
import ChildProcesses
import Foundation
import LoopbackHTTPServer
import PostgresTestServer
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A fleet of `bgsync run` processes on one PostgreSQL store: every entry is delivered, an ordered
/// queue in order, nothing twice without its key, a killed worker's share taken over.
@Suite(
    "A fleet of workers on PostgreSQL", .serialized, .timeLimit(.minutes(5)),
    .enabled(if: PostgresTestServer.unavailableReason == nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresFleetTests {
    /// A `bgsync run` worker process, its log in a file.
    final class Worker: Sendable {
        let process: ChildProcess
        let log: URL

        init(url: String, folder: URL, index: Int) throws {
            log = folder.appendingPathComponent("worker-\(index).log")
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let logFile = try FileHandle(forWritingTo: log)
            defer { try? logFile.close() }
            process = try ChildProcess(builtProductURL("bgsync"), [
                "run", "--db", url, "--concurrent", "bulk=4", "--no-connectivity-monitor", "--poll-interval", "0.5",
                "--log-level", "info",
            ], standardError: .handle(logFile))
        }

        func kill(_ signal: Int32) { process.send(signal) }

        /// Waits for the process to end, off the cooperative pool: up to 30 seconds, then records
        /// an issue and kills it.
        func wait() async throws {
            if try await !exited(process, within: 30) {
                Issue.record("worker \(self.process.processIdentifier) still runs 30 s after SIGTERM: \(logText)")
                kill(SIGKILL)
                try await offCooperativePool { self.process.waitUntilExit() }
            }
        }

        var logText: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
    }

    /// A queue's bodies in the order the server first received them.
    private func firstReceipts(_ requests: [LoopbackHTTPServer.Request], queue: String) -> [Int] {
        var seen: Set<Int> = []
        var order: [Int] = []
        for request in requests {
            let body = String(decoding: request.body, as: UTF8.self)
            guard body.hasPrefix(queue + "-"), let number = Int(body.dropFirst(queue.count + 1)) else { continue }
            if seen.insert(number).inserted { order.append(number) }
        }
        return order
    }

    /// The pid in the lease on an entry of `queue` whose body is `body`, read with `psql`.
    private func leaseHolder(_ postgres: PostgresTestServer, schema: String, body: String) async throws -> Int32? {
        let run = try await offCooperativePool {
            try runChild(
                URL(fileURLWithPath: "/usr/bin/psql"),
                ["-h", "127.0.0.1", "-p", "\(postgres.port)", "-U", postgres.user, "-d", "postgres", "-tAc",
                 "SELECT lease_owner FROM \(schema).entry WHERE convert_from(body, 'UTF8') = '\(body)'"],
                environment: ["PATH": "/usr/bin:/bin"])
        }
        let owner = run.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        return LeaseOwner(rawValue: owner)?.processID
    }

    @Test func fourWorkersOneKilledMidSendDeliverEverything() async throws {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        let schema = uniqueSchema("fleet")
        let url = postgres.url + "?sslmode=disable&schema=\(schema)"
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-fleet-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let server = try RecordingServer()
        // Each request takes a while, so that the workers' sends overlap; the first send of
        // "ordered-10" is held long enough for its worker to be killed while sending it.
        let held = Box(false)
        server.respond { request, _ in
            if String(decoding: request.body, as: UTF8.self) == "ordered-10", !held.withLock({ $0 }) {
                held.withLock { $0 = true }
                return .respond(.text("ok"), delay: .seconds(3))
            }
            return .respond(.text("ok"), delay: .milliseconds(40))
        }
        let perQueue = 30
        // The schema exists before the workers start (they would create it too, racing).
        let first = try await bgsync(["enqueue", "--db", url, "--queue", "ordered", "-d", "ordered-0", server.url.absoluteString])
        #expect(first.status == 0, "\(first.stderr)")
        let workers = try (0..<4).map { try Worker(url: url, folder: folder, index: $0) }
        let killed = Box<(pid: Int32, at: Date)?>(nil)
        let resentAfter = Box<TimeInterval?>(nil)
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The fifth process: queueing while the workers replay, one bgsync enqueue at a time.
            group.addTask {
                for number in 0..<perQueue {
                    for queue in ["ordered", "bulk"] where !(queue == "ordered" && number == 0) {
                        let run = try await bgsync(
                            ["enqueue", "--db", url, "--queue", queue, "-d", "\(queue)-\(number)", server.url.absoluteString])
                        #expect(run.status == 0, "\(run.stderr)")
                    }
                }
            }
            // The worker sending "ordered-10" is killed while the server holds it.
            group.addTask {
                var waited = 0
                while !held.withLock({ $0 }) && waited < 6_000 {
                    try await Task.sleep(for: .milliseconds(10))
                    waited += 1
                }
                guard let pid = try await self.leaseHolder(postgres, schema: schema, body: "ordered-10"),
                    let worker = workers.first(where: { $0.process.processIdentifier == pid })
                else { return }
                worker.kill(SIGKILL)
                let at = Date()
                killed.withLock { $0 = (pid, at) }
                // A survivor sends it again once the dead worker's session is gone.
                waited = 0
                while server.bodies.filter({ $0 == "ordered-10" }).count < 2 && waited < 6_000 {
                    try await Task.sleep(for: .milliseconds(10))
                    waited += 1
                }
                resentAfter.withLock { $0 = Date().timeIntervalSince(at) }
            }
            try await group.waitForAll()
        }
        // Wait for every entry to arrive (or a minute to pass).
        let expected = Set((0..<perQueue).flatMap { ["ordered-\($0)", "bulk-\($0)"] })
        var waited = 0
        while !expected.isSubset(of: Set(server.bodies)) && waited < 6_000 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        let finishedAt = Date()
        for worker in workers where worker.process.isRunning { worker.kill(SIGTERM) }
        for worker in workers { try await worker.wait() }
        let requests = server.received.current
        let death = try #require(killed.current, "the worker sending ordered-10 was found and killed")
        #expect(workers.first { $0.process.processIdentifier == death.pid }?.process.terminationReason == .uncaughtSignal)
        let missing = expected.subtracting(Set(server.bodies))
        // Nothing is lost: what was not delivered within the minute is still queued.
        let left = try await bgsync(["queues", "--db", url, "--json"])
        let queues = try JSONSerialization.jsonObject(with: Data(left.stdout.utf8)) as? [[String: Any]]
        let pending = queues?.compactMap { $0["pending"] as? Int }.reduce(0, +)
        #expect(pending == missing.count, "not delivered and not queued either: \(missing.sorted()), \(left.stdout)")
        #expect(missing.isEmpty, "not delivered within a minute (still queued): \(missing.sorted())")
        // The ordered queue arrived in order; the entry the dead worker was sending was sent again.
        let ordered = firstReceipts(requests, queue: "ordered")
        #expect(ordered == ordered.sorted(), "the ordered queue arrived as \(ordered)")
        #expect(server.bodies.filter { $0 == "ordered-10" }.count == 2)
        // Anything sent twice carried one key.
        var keys: [String: Set<String>] = [:]
        for request in requests {
            keys[String(decoding: request.body, as: UTF8.self), default: []].insert(request.headers["idempotency-key"] ?? "none")
        }
        #expect(keys.values.allSatisfy { $0.count == 1 && !$0.contains("none") }, "\(keys.filter { $0.value.count != 1 })")
        // A survivor took the dead worker's entry over within seconds (its lease was for 5 minutes).
        let takeover = try #require(resentAfter.current)
        print("fleet: \(requests.count) requests for \(expected.count) entries; ordered-10 sent again \(takeover) s after its worker was killed; all delivered \(finishedAt.timeIntervalSince(death.at)) s after")
        #expect(takeover < 10)
    }

    @Test func workersFinishAfterTheServerRestartsMidDrain() async throws {
        // A server of this test's own: stopping it must not disturb the other tests.
        let postgres = try await offCooperativePool { try PostgresTestServer() }
        let url = postgres.url + "?sslmode=disable&schema=restart"
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-restart-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("ok"), delay: .milliseconds(50)) }
        let count = 40
        for number in 0..<count {
            for queue in ["ordered", "bulk"] {
                let run = try await bgsync(
                    ["enqueue", "--db", url, "--queue", queue, "-d", "\(queue)-\(number)", server.url.absoluteString])
                #expect(run.status == 0, "\(run.stderr)")
            }
        }
        let workers = try (0..<2).map { try Worker(url: url, folder: folder, index: $0) }
        var waited = 0
        while server.bodies.count < 20 && waited < 3_000 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        // Fast shutdown ends every session mid-drain; the server comes back a second later.
        try await offCooperativePool { postgres.stop() }
        let deliveredBeforeRestart = server.bodies.count
        try await Task.sleep(for: .seconds(1))
        try await offCooperativePool { try postgres.start() }
        let expected = Set((0..<count).flatMap { ["ordered-\($0)", "bulk-\($0)"] })
        waited = 0
        while !expected.isSubset(of: Set(server.bodies)) && waited < 9_000 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        for worker in workers { worker.kill(SIGTERM) }
        for worker in workers { try await worker.wait() }
        print("restart: \(deliveredBeforeRestart) delivered before the restart, \(server.bodies.count) requests in all, \(Double(waited) / 100) s after it")
        #expect(deliveredBeforeRestart < 2 * count, "the restart came mid-drain")
        let missing = expected.subtracting(Set(server.bodies))
        #expect(missing.isEmpty, "not delivered: \(missing.sorted()); logs: \(workers.map(\.logText))")
        let ordered = firstReceipts(server.received.current, queue: "ordered")
        #expect(ordered == ordered.sorted(), "the ordered queue arrived as \(ordered)")
        var keys: [String: Set<String>] = [:]
        for request in server.received.current {
            keys[String(decoding: request.body, as: UTF8.self), default: []].insert(request.headers["idempotency-key"] ?? "none")
        }
        #expect(keys.values.allSatisfy { $0.count == 1 && !$0.contains("none") })
        // Both workers outlived the restart: they were stopped by the test, not by the error.
        #expect(workers.allSatisfy { $0.process.terminationReason == .exit && $0.process.terminationStatus == 0 },
            "\(workers.map(\.logText))")
    }
}
