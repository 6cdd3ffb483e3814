import BackgroundSync
import ChildProcesses
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A queue name no other test uses.
func uniqueQueueName(_ prefix: String = "q") -> String {
    "\(prefix)-\(UUID().uuidString.prefix(8))"
}

/// A POST request with a text body.
func postRequest(_ url: URL, body: String, headers: [String: String] = [:]) -> URLRequest {
    var request = URLRequest(url: url)
    request.httpMethod = "POST"
    request.httpBody = Data(body.utf8)
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    return request
}

/// Thread-safe storage for tests (the server handler runs on its own threads).
final class Box<Value>: @unchecked Sendable {
    // Safe: every access goes through `lock`.
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }

    var current: Value { withLock { $0 } }
}

/// A loopback server that records every request and answers according to a rule the test can change.
final class RecordingServer: Sendable {
    let server: LoopbackHTTPServer
    let received = Box<[LoopbackHTTPServer.Request]>([])
    let rule = Box<@Sendable (LoopbackHTTPServer.Request, Int) -> LoopbackHTTPServer.Action>({ _, _ in
        .respond(.text("ok"))
    })

    init() throws {
        let received = self.received
        let rule = self.rule
        server = LoopbackHTTPServer { request in
            let index = received.withLock { list -> Int in
                list.append(request)
                return list.count - 1
            }
            return rule.current(request, index)
        }
        try server.start()
    }

    var url: URL { server.baseURL.appendingPathComponent("api/posts") }

    /// The bodies received, as text, in order.
    var bodies: [String] { received.current.map { String(decoding: $0.body, as: UTF8.self) } }

    func respond(_ rule: @escaping @Sendable (LoopbackHTTPServer.Request, Int) -> LoopbackHTTPServer.Action) {
        self.rule.withLock { $0 = rule }
    }

    deinit { server.stop() }
}

/// A transport that injects faults in front of a real one: the test scripts, call by call, whether
/// the request fails with an error before reaching the network.
final class FaultInjectingTransport: HTTPTransport {
    let base: any HTTPTransport
    let failures = Box<[(any Error)?]>([])
    let calls = Box(0)

    init(base: any HTTPTransport = URLSessionTransport()) {
        self.base = base
    }

    func send(_ request: URLRequest) async throws -> ServerResponse {
        calls.withLock { $0 += 1 }
        if let failure = failures.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
            throw failure
        }
        return try await base.send(request)
    }
}

/// The folder of the test binary, where SwiftPM also puts the executables the tests depend on.
func builtProductURL(_ name: String) -> URL {
    let candidates = [
        Bundle.main.bundleURL,
        Bundle.main.bundleURL.deletingLastPathComponent(),
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
    ]
    for folder in candidates {
        let url = folder.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    return candidates[0].appendingPathComponent(name)
}

/// The lines a child process writes to `pipe`, as they come (read on a thread of their own).
func lines(of pipe: Pipe) -> AsyncStream<String> {
    let (stream, continuation) = AsyncStream.makeStream(of: String.self)
    Thread {
        var buffer = Data()
        while true {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            buffer.append(chunk)
            while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                continuation.yield(String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self))
                buffer.removeSubrange(buffer.startIndex...newline)
            }
        }
        continuation.finish()
    }.start()
    return stream
}

/// A replayer of another host.
let otherReplayer = LeaseOwner(host: "elsewhere", processID: 1, token: "other")

/// The entries another replayer could take now in the concurrent mode (given back afterwards).
func claimableEntries(_ database: any QueueDatabase, _ queue: String) async throws -> [QueueStoreEntry] {
    let claims = database.claims(
        queueName: queue, order: .concurrent(maxInFlight: 50), owner: otherReplayer, leaseDuration: .seconds(60),
        clock: SystemWallClock())
    var entries: [QueueStoreEntry] = []
    while case .claimed(let entry) = try await claims.next() { entries.append(entry) }
    try await claims.finish()
    return entries
}

/// What another replayer's ordered replay finds first, and the entries it could take in order
/// (given back afterwards).
func orderedClaim(_ database: any QueueDatabase, _ queue: String) async throws -> (first: ClaimResult, entries: [QueueStoreEntry]) {
    let claims = database.claims(
        queueName: queue, order: .ordered, owner: otherReplayer, leaseDuration: .seconds(60), clock: SystemWallClock())
    let first = try await claims.next()
    var entries: [QueueStoreEntry] = []
    var next = first
    while case .claimed(let entry) = next {
        entries.append(entry)
        next = try await claims.next()
    }
    try await claims.finish()
    return (first, entries)
}

/// Runs blocking work (waiting for a child process) on a thread of its own: on a 2-core machine the
/// cooperative pool has two threads, and tests that block them starve every other running test.
func offCooperativePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// Waits up to `seconds` for `process` to end, off the cooperative pool; `true` when it ended.
/// A cancelled caller stops waiting at once.
func exited(_ process: ChildProcess, within seconds: TimeInterval) async throws -> Bool {
    let cancelled = Locked(false)
    return try await withTaskCancellationHandler {
        try await offCooperativePool { () -> Bool in
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline && !cancelled.withLock({ $0 }) { usleep(20_000) }
            return !process.isRunning
        }
    } onCancel: {
        cancelled.withLock { $0 = true }
    }
}

/// Waits up to `seconds` for `process` to end; a process still running then is killed (SIGKILL)
/// and the test fails, naming `what`. Returns whether it ended by itself.
@discardableResult
func awaitExit(
    _ process: ChildProcess, within seconds: TimeInterval, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
) async throws -> Bool {
    if try await exited(process, within: seconds) { return true }
    process.send(SIGKILL)
    try await offCooperativePool { process.waitUntilExit() }
    if Task.isCancelled { return false }
    Issue.record("\(what) still ran after \(Int(seconds)) s: killed", sourceLocation: sourceLocation)
    return false
}

/// A PostgreSQL schema name no other test uses: `prefix` and a UUID's hex digits.
func uniqueSchema(_ prefix: String) -> String {
    prefix + "_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
}

/// Runs one SQL text on a database file with the `sqlite3` command, as another process would (to
/// damage a row, or change one behind a store's back); waits for a lock the file may still be
/// under (a closing database's last checkpoint).
func sqlite(_ path: String, _ sql: String) throws {
    let run = try ChildProcess.run("/usr/bin/env", ["sqlite3", "-cmd", ".timeout 10000", path, sql])
    #expect(run.status == 0, "\(String(decoding: run.stderr, as: UTF8.self))")
}
