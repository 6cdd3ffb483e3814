import BackgroundSync
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
            let before = Self.cpuTime()
            rates.append(try await enqueue.queueRate(count: count, producers: 16))
            let after = Self.cpuTime()
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

    /// The process's CPU time (user and system) since `start`, in microseconds.
    static func cpuMicroseconds(since start: (user: Double, system: Double)) -> Double {
        let now = cpuTime()
        return (now.user - start.user + now.system - start.system) * 1e6
    }

    static func cpuTime() -> (user: Double, system: Double) {
        var usage = rusage()
        #if canImport(Glibc)
        getrusage(RUSAGE_SELF.rawValue, &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
        return (seconds(usage.ru_utime), seconds(usage.ru_stime))
    }
}
