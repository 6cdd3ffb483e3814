import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension Duration {
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

/// The middle value; for an even count, the mean of the two middle values.
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    let middle = sorted.count / 2
    return sorted.count.isMultiple(of: 2) ? (sorted[middle - 1] + sorted[middle]) / 2 : sorted[middle]
}

/// The median of the rounds' ratios `subject[i] / baseline[i]`.
func medianRatio(_ subject: [Double], _ baseline: [Double]) -> Double {
    median(zip(subject, baseline).map { $0 / $1 })
}

/// Runs `step` `warmUp` times untimed, then `count` times timed; returns the timed steps per second.
func warmedRate(count: Int, warmUp: Int, _ step: () async throws -> Void) async throws -> Double {
    for _ in 0..<warmUp { try await step() }
    let start = ContinuousClock.now
    for _ in 0..<count { try await step() }
    return Double(count) / (ContinuousClock.now - start).seconds
}

/// The process's CPU time so far (all threads), in seconds.
struct CPUTime {
    var user: Double
    var system: Double
    /// Context switches, voluntary and not, of every thread so far.
    var switches: Double = 0

    static func now() -> CPUTime {
        var usage = rusage()
        #if canImport(Glibc)
        getrusage(RUSAGE_SELF.rawValue, &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
        return CPUTime(
            user: seconds(usage.ru_utime), system: seconds(usage.ru_stime),
            switches: Double(usage.ru_nvcsw + usage.ru_nivcsw))
    }

    /// CPU time (µs) and context switches per operation, for `count` operations since `start`.
    func perOperation(since start: CPUTime, count: Int) -> (cpu: Double, switches: Double) {
        (microseconds(since: start) / Double(count), (switches - start.switches) / Double(count))
    }

    /// User and system time since `start`, in microseconds.
    func microseconds(since start: CPUTime) -> Double {
        (user - start.user + system - start.system) * 1e6
    }
}

/// How long `body` takes.
func timed(_ body: () async throws -> Void) async throws -> Duration {
    let start = ContinuousClock.now
    try await body()
    return ContinuousClock.now - start
}

/// Runs `count` operations of each side, one of each in turn (which goes first alternates), each
/// timed alone; returns each side's rate. Whatever the machine does at any moment falls on both
/// sides alike.
func interleavedRates(
    count: Int, _ baseline: (Int) async throws -> Void, _ subject: (Int) async throws -> Void
) async throws -> (baseline: Double, subject: Double) {
    var (baselineTime, subjectTime) = (Duration.zero, Duration.zero)
    for index in 0..<count {
        let subjectFirst = index.isMultiple(of: 2)
        if subjectFirst { subjectTime += try await timed { try await subject(index) } }
        baselineTime += try await timed { try await baseline(index) }
        if !subjectFirst { subjectTime += try await timed { try await subject(index) } }
    }
    return (Double(count) / baselineTime.seconds, Double(count) / subjectTime.seconds)
}

/// `perf record`'s control FIFO, named by `$PERF_CTL`, so that a profile holds only the timed part
/// of the drains (`replay`, `ahc`, `ahcpairs`, one side at a time with `BGSYNC_BENCH_SIDE`), of the
/// `ahcpairs` transport loop, and of `pgsplit`'s rounds:
///
///     mkfifo /tmp/perf-ctl
///     PERF_CTL=/tmp/perf-ctl BGSYNC_BENCH_SIDE=drain perf record -D -1 --control=fifo:/tmp/perf-ctl -g \
///         .build/release/bgsync-bench --only=ahcpairs
///
/// With `-e context-switches -c 1`, the profile shows where each context switch comes from.
enum PerfControl {
    nonisolated(unsafe) private static var descriptor: Int32 = -1

    /// Opens `$PERF_CTL` when it is set, without waiting for a reader; returns why it cannot be used.
    static func start() -> String? {
        guard let path = ProcessInfo.processInfo.environment["PERF_CTL"] else { return nil }
        descriptor = open(path, O_WRONLY | O_NONBLOCK)
        guard descriptor >= 0 else {
            return "PERF_CTL names '\(path)', which is not a FIFO that perf record --control reads (\(String(cString: strerror(errno))))"
        }
        signal(SIGPIPE, SIG_IGN)  // perf ending first must not end the benchmark
        return nil
    }

    /// Runs `body` with the profile recording.
    static func recording<T>(_ body: () async throws -> T) async rethrows -> T {
        command("enable\n")
        defer { command("disable\n") }
        return try await body()
    }

    private static func command(_ text: String) {
        guard descriptor >= 0 else { return }
        _ = text.withCString { write(descriptor, $0, strlen($0)) }
    }
}

/// Lets the previous group's leftovers go before a group starts: the file system's dirty pages
/// are written out (`sync`), so their writeback does not fall inside the group's timing; with
/// `threads`, the dispatch worker threads the previous group left idle (GRDB's queues run on them;
/// libdispatch ends a worker idle for about 5 seconds) are waited for, until the thread count has
/// not changed for 6 seconds, at most 20 seconds. Where there is no `/proc` (macOS), only `sync`.
func settle(threads: Bool) {
    sync()
    guard threads else { return }
    let clock = ContinuousClock()
    var (count, stableSince) = (threadCount(), clock.now)
    let deadline = clock.now + .seconds(20)
    while count > 1, clock.now - stableSince < .seconds(6), clock.now < deadline {
        Thread.sleep(forTimeInterval: 0.5)
        let now = threadCount()
        if now != count { (count, stableSince) = (now, clock.now) }
    }
}

/// This process's threads, from `/proc/self/status` (0 where there is no `/proc`).
func threadCount() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("Threads:") {
        return Int(line.dropFirst("Threads:".count).trimmingCharacters(in: .whitespaces)) ?? 0
    }
    return 0
}
