import BackgroundSync
import Foundation

/// A diagnostic, not a figure (`--only=group`): 16 producers alone, repeated, with the process's
/// CPU time per entry (user and system), to profile the group-commit path with `perf record`.
struct GroupCommitDiagnostic {
    let quick: Bool
    let freshPath: (String) -> String

    func run(log: (String) -> Void) async throws -> [(String, Double)] {
        let count = quick ? 1200 : 6000
        let enqueue = EnqueueBenchmark(quick: quick, freshPath: freshPath)
        var rates: [Double] = []
        var userMicros: [Double] = []
        var systemMicros: [Double] = []
        for _ in 0..<(quick ? 3 : 9) {
            let queue = try EnqueueBenchmark.queue(path: freshPath("group"))
            _ = try await enqueue.queueRate(queue, count: EnqueueBenchmark.warmUp, producers: 16)
            let before = CPUTime.now()
            rates.append(try await enqueue.queueRate(queue, count: count, producers: 16))
            let after = CPUTime.now()
            userMicros.append((after.user - before.user) * 1e6 / Double(count))
            systemMicros.append((after.system - before.system) * 1e6 / Double(count))
        }
        let rate = median(rates)
        log(String(format: "16 producers: %.0f entries/s, CPU per entry %.1f µs user + %.1f µs system (median of %d)",
                   rate, median(userMicros), median(systemMicros), rates.count))
        return [
            ("group_16_producers_per_s", rate),
            ("group_cpu_user_us_per_entry", median(userMicros)),
            ("group_cpu_system_us_per_entry", median(systemMicros)),
        ]
    }
}
