import BackgroundSync
import Foundation

/// Peak resident memory while draining a large queue against a small one, each in a child
/// process of its own (the bench binary with `--drain-child PATH COUNT`), so that one run's
/// allocations do not hide in the other's peak.
struct MemoryBenchmark {
    let quick: Bool
    let freshPath: (String) -> String

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        let large = quick ? 10_000 : 100_000
        let small = 1_000
        let smallPeak = try child(count: small)
        let largePeak = try child(count: large)
        log("peak RSS draining \(small): \(smallPeak) kB; draining \(large): \(largePeak) kB")
        return [
            ("drain_rss_kb_small", Double(smallPeak)),
            ("drain_rss_kb_large", Double(largePeak)),
            ("drain_rss_ratio_100k_vs_1k", Double(largePeak) / Double(smallPeak)),
            ("drain_rss_large_entries", Double(large)),
        ]
    }

    private func child(count: Int) throws -> Int {
        let server = try Fixtures.server()
        defer { server.stop() }
        let path = freshPath("memory-\(count)")
        try Fixtures.fill(path: path, queue: "bench", url: server.baseURL.appendingPathComponent("p").absoluteString, count: count)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments = ["--drain-child", path, "\(count)"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0, let peak = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw BenchError("the drain child failed: \(text)")
        }
        return peak
    }

    /// The child: drains the queue of `path` and prints its peak RSS in kB.
    static func drainChild(path: String, count: Int) async throws {
        let queue = try Queue(name: "bench", database: try SQLiteQueueDatabase(path: path), syncManager: SyncManager())
        let summary = try await queue.replayRequests()
        guard summary.delivered == count else { throw BenchError("drained \(summary.delivered) of \(count)") }
        print(peakResidentKilobytes())
    }
}

/// A benchmark that cannot go on, with the reason.
struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
