import BackgroundSync
import BackgroundSyncDashboard
import ChildProcesses
import Foundation
import Logging
import Testing

/// Serves a dashboard on `database` on a free port for the duration of `body`, which gets its
/// `http://127.0.0.1:PORT`.
@available(macOS 14, iOS 17, tvOS 17, *)
func serveDashboard(
    _ database: any QueueDatabase, _ configuration: DashboardConfiguration, _ body: @Sendable (_ base: String) async throws -> Void
) async throws {
    let (ports, portInput) = AsyncStream.makeStream(of: Int.self)
    let dashboard = try Dashboard(
        database: database, configuration: configuration, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() },
        onRunning: { portInput.yield($0) })
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            // A dashboard that fails to start ends the wait for its port.
            defer { portInput.finish() }
            try await dashboard.run()
        }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())
        try await body("http://127.0.0.1:\(port)")
        group.cancelAll()
    }
}

/// Stores a POST in `queue` and returns its id.
func pushPOST(_ database: any QueueDatabase, _ queue: String, url: String, body: String, headers: [String: String]) async throws -> Int64 {
    try await database.pushEntry(
        UnidentifiedQueueStoreEntry(requestData: .init(url: url, method: "POST", headers: headers, body: Data(body.utf8))),
        queueName: queue, at: .tail, registeringSyncTag: nil
    ).id
}

/// Starts the built `bgsync` with `arguments` (a command that serves HTTP on `127.0.0.1:0`) and
/// returns it, the base URL it announced, and the announcement (its first line of output).
func startServingBgsync(_ arguments: [String]) async throws -> (process: ChildProcess, base: String, announcement: String) {
    let stdout = Pipe()
    let process = try ChildProcess(builtProductURL("bgsync"), arguments, standardOutput: .pipe(stdout))
    var output = lines(of: stdout).makeAsyncIterator()
    guard let line = await output.next(),
        let port = line.range(of: "127.0.0.1:").flatMap({ Int(line[$0.upperBound...].prefix { $0.isNumber }) })
    else {
        process.terminate()
        throw BrowserError("bgsync \(arguments.first ?? "") announced no address")
    }
    return (process, "http://127.0.0.1:\(port)", line)
}
