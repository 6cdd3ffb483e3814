// bgsync-bench: each figure is measured against its bare baseline in the same run, so a noisy
// machine moves both sides and the ratio stays meaningful.
//
//   swift run -c release bgsync-bench            full run
//   swift run -c release bgsync-bench --quick    reduced sizes, under a minute
//   swift run -c release bgsync-bench --json     one JSON object on one line
import BackgroundSync
import Foundation
import GRDB
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

if CommandLine.arguments.count == 4 && CommandLine.arguments[1] == "--drain-child" {
    try await MemoryBenchmark.drainChild(path: CommandLine.arguments[2], count: Int(CommandLine.arguments[3]) ?? 0)
    exit(0)
}

if CommandLine.arguments.count == 5 && CommandLine.arguments[1] == "--postgres-worker-child" {
    try await PostgresBenchmark.workerChild(
        url: CommandLine.arguments[2], queue: CommandLine.arguments[3], inFlight: Int(CommandLine.arguments[4]) ?? 1)
    exit(0)
}

let arguments = Set(CommandLine.arguments.dropFirst())
let known: Set<String> = ["--quick", "--json"]
if let unknown = arguments.first(where: { !known.contains($0) && !$0.hasPrefix("--only=") }) {
    FileHandle.standardError.write(Data("bgsync-bench: unknown option '\(unknown)' (use --quick, --json, --only=enqueue,replay,ahc,scale,memory,postgres,dashboard; diagnostics: split,group,pairs,ahcpairs,pgsplit)\n".utf8))
    exit(2)
}
// The diagnostics' environment variables, checked before anything runs.
let environment = ProcessInfo.processInfo.environment
if let side = environment["BGSYNC_BENCH_SIDE"], !["bare", "transport", "drain", "instant"].contains(side) {
    FileHandle.standardError.write(Data("bgsync-bench: BGSYNC_BENCH_SIDE must be bare, transport, drain or instant, not '\(side)'\n".utf8))
    exit(2)
}
if let layer = environment["PGSPLIT_ONLY"], !(Int(layer).map(PostgresSplitDiagnostic.layers.contains) ?? false) {
    FileHandle.standardError.write(Data("bgsync-bench: PGSPLIT_ONLY must be a layer number from 0 to \(PostgresSplitDiagnostic.layers.upperBound - 1), not '\(layer)'\n".utf8))
    exit(2)
}
if let problem = PerfControl.start() {
    FileHandle.standardError.write(Data("bgsync-bench: \(problem)\n".utf8))
    exit(2)
}
let quick = arguments.contains("--quick")
// `--only=enqueue,replay,ahc,scale,memory,postgres,dashboard` runs some groups (for profiling); default: all.
let only = CommandLine.arguments.first { $0.hasPrefix("--only=") }
    .map { Set($0.dropFirst("--only=".count).split(separator: ",").map(String.init)) }
/// Whether `group` runs: a figure group unless `--only` leaves it out, a diagnostic only when
/// `--only` names it. A group that runs after another starts once that one's leftovers are gone
/// (see `settle(threads:)`; the idle threads are waited for in full runs only).
var groupsStarted = 0
@MainActor func runs(_ group: String, diagnostic: Bool = false) -> Bool {
    guard diagnostic ? only?.contains(group) == true : only?.contains(group) ?? true else { return false }
    if groupsStarted > 0 { settle(threads: !quick) }
    groupsStarted += 1
    return true
}
let json = arguments.contains("--json")

func log(_ line: String) {
    if !json { print(line) }
    else { FileHandle.standardError.write(Data((line + "\n").utf8)) }
}

var results: [(key: String, value: Double)] = []

let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-bench-\(UUID().uuidString)")
try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: scratch) }
func freshPath(_ name: String) -> String { scratch.appendingPathComponent("\(name)-\(UUID().uuidString).sqlite").path }

let cores = ProcessInfo.processInfo.activeProcessorCount
log("bgsync-bench (\(quick ? "quick" : "full")) on \(cores) cores")

if runs("enqueue") {
    results += try await EnqueueBenchmark(quick: quick, freshPath: freshPath).run(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("split", diagnostic: true) {
    results += try await SplitBenchmark(quick: quick, freshPath: freshPath).run(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("group", diagnostic: true) {
    results += try await GroupCommitDiagnostic(quick: quick, freshPath: freshPath).run(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("pairs", diagnostic: true) {
    results += try await ReplayBenchmark(quick: quick, freshPath: freshPath).pairs(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("ahcpairs", diagnostic: true) {
    results += try await AsyncHTTPClientBenchmark(quick: quick, freshPath: freshPath).pairs(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("pgsplit", diagnostic: true) {
    try await PostgresSplitDiagnostic(quick: quick).run(log: log)
}
if runs("replay") {
    results += try await ReplayBenchmark(quick: quick, freshPath: freshPath).run(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("ahc") {
    results += try await AsyncHTTPClientBenchmark(quick: quick, freshPath: freshPath).run(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("scale") {
    results += try await ScaleBenchmark(quick: quick, freshPath: freshPath).run(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("postgres") {
    results += try await PostgresBenchmark(quick: quick).run(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("dashboard") {
    results += try await DashboardBenchmark(quick: quick, freshPath: freshPath).run(log: log).map { (key: $0.0, value: $0.1) }
}
if runs("memory") {
    results += try await MemoryBenchmark(quick: quick, freshPath: freshPath).run(log: log).map { (key: $0.0, value: $0.1) }
}
results.append((key: "cores", value: Double(cores)))

if json {
    let body = results.map { "\"\($0.key)\":\(String(format: "%.4f", $0.value))" }.joined(separator: ",")
    print("{" + body + "}")
} else {
    print("")
    print("figure".padding(toLength: 40, withPad: " ", startingAt: 0) + "value")
    for (key, value) in results {
        print(key.padding(toLength: 40, withPad: " ", startingAt: 0) + String(format: "%.3f", value))
    }
}
