@testable import BackgroundSync
import BackgroundSyncTesting
import ChildProcesses
import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("Connectivity monitors", .timeLimit(.minutes(1)))
struct ConnectivityTests {
    @Test func theManualMonitorStartsWithTheCurrentStatusAndReportsChanges() async {
        let monitor = ManualConnectivityMonitor(.offline)
        var updates = monitor.statusUpdates().makeAsyncIterator()
        #expect(await updates.next() == .offline)
        monitor.set(.offline)
        monitor.set(.online)
        #expect(await updates.next() == .online)
    }

    @Test func theProbeMonitorTellsAServerThatAnswersFromOneThatDoesNot() async throws {
        let server = try RecordingServer()
        let port = server.server.port
        server.server.stop()
        let clock = ManualWallClock()
        let monitor = ProbeConnectivityMonitor(url: server.server.baseURL.appendingPathComponent("health"), clock: clock)
        var updates = monitor.statusUpdates().makeAsyncIterator()
        #expect(await updates.next() == .offline)
        // Offline: it probes again after 1 s, 2 s, 4 s...
        await clock.waitForSleepers(1)
        #expect(abs(clock.nextDeadline!.timeIntervalSince(clock.now) - 1) < 0.01)
        try server.server.start(port: port)
        clock.advance(by: .seconds(1))
        #expect(await updates.next() == .online)
        #expect(server.received.current.first?.method == "HEAD")
    }

    @Test func aBaseMonitorGatesTheProbesAndItsOfflineEndsThem() async throws {
        let server = try RecordingServer()
        let base = ManualConnectivityMonitor(.offline)
        let clock = ManualWallClock()
        let monitor = ProbeConnectivityMonitor(
            url: server.server.baseURL.appendingPathComponent("health"), clock: clock, base: base)
        var updates = monitor.statusUpdates().makeAsyncIterator()
        // Offline by the base: said at once, nothing probed.
        #expect(await updates.next() == .offline)
        #expect(server.received.current.isEmpty)
        base.set(.online)
        #expect(await updates.next() == .online)
        #expect(server.received.current.count == 1)
        base.set(.offline)
        #expect(await updates.next() == .offline)
        base.set(.online)
        #expect(await updates.next() == .online)
        #expect(server.received.current.count == 2)
    }

    @Test func aBaseOfflineIsToldAtOnceAndAProbeUnderWayIsNotHeard() async throws {
        let base = ManualConnectivityMonitor(.online)
        let clock = ManualWallClock()
        let transport = SecondProbeHeld()
        let monitor = ProbeConnectivityMonitor(
            url: URL(string: "http://127.0.0.1:9/health")!, transport: transport, clock: clock, base: base)
        var updates = monitor.statusUpdates().makeAsyncIterator()
        #expect(await updates.next() == .online)
        await clock.waitForSleepers(1)
        clock.advance(by: .seconds(60))
        var held = transport.held.makeAsyncIterator()
        await held.next()
        // The second probe hangs, deaf to cancellation: the base's offline does not wait for it.
        base.set(.offline)
        #expect(await updates.next() == .offline)
        // It fails once let go; that offline of a cancelled probe is not told, so the next word
        // is the third probe's online.
        transport.release()
        base.set(.online)
        #expect(await updates.next() == .online)
        #expect(transport.calls == 3)
    }

    #if os(Linux)
    @Test func routeTablesAreReadAsTheKernelWritesThem() {
        let ipv4 = """
            Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
            """
        #expect(NetlinkConnectivityMonitor.hasIPv4DefaultRoute(ipv4))
        let noDefault = """
            Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
            """
        #expect(!NetlinkConnectivityMonitor.hasIPv4DefaultRoute(noDefault))
        let ipv6 = """
            fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
            """
        #expect(NetlinkConnectivityMonitor.hasIPv6DefaultRoute(ipv6))
        let unreachable = """
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
            """
        #expect(!NetlinkConnectivityMonitor.hasIPv6DefaultRoute(unreachable))
    }

    /// Whether this machine lets us make a network namespace (root, or unprivileged user namespaces).
    static let canCreateNetworkNamespace: Bool = {
        guard let process = try? ChildProcess("/usr/bin/unshare", ["-n", "true"]) else { return false }
        return process.terminationStatus == 0
    }()

    private func run(_ arguments: [String]) throws {
        let run = try ChildProcess.run(arguments[0], Array(arguments.dropFirst()))
        #expect(run.status == 0, "\(arguments.joined(separator: " ")): \(String(decoding: run.stderr, as: UTF8.self))")
    }

    /// The netlink monitor runs in a child process inside a new network namespace (no route), and
    /// the test adds and removes a default route there with iproute2: the monitor must see both.
    @Test(.enabled(if: canCreateNetworkNamespace, "needs permission to create a network namespace"))
    func theNetlinkMonitorSeesADefaultRouteAppearAndGo() async throws {
        let output = Pipe()
        let process = try ChildProcess(
            "/usr/bin/unshare", ["-n", builtProductURL("BackgroundSyncTestChild").path, "connectivity"],
            standardOutput: .pipe(output))
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        var statuses = lines(of: output).makeAsyncIterator()
        #expect(await statuses.next() == "offline")

        let inNamespace = ["/usr/bin/nsenter", "-t", "\(process.processIdentifier)", "-n"]
        try run(inNamespace + ["/usr/sbin/ip", "link", "add", "bgs0", "type", "veth", "peer", "name", "bgs1"])
        try run(inNamespace + ["/usr/sbin/ip", "link", "set", "bgs0", "up"])
        try run(inNamespace + ["/usr/sbin/ip", "link", "set", "bgs1", "up"])
        try run(inNamespace + ["/usr/sbin/ip", "route", "add", "default", "dev", "bgs0"])
        #expect(await statuses.next() == "online")
        try run(inNamespace + ["/usr/sbin/ip", "route", "del", "default"])
        #expect(await statuses.next() == "offline")
    }
    #endif
}

/// Answers every probe at once with a 204, except the second, which it holds until released
/// (cancelled or not) and then fails with a timeout.
private final class SecondProbeHeld: HTTPTransport {
    private let state = Locked<(calls: Int, waiting: CheckedContinuation<Void, Never>?)>((0, nil))
    /// One element when the second probe is held.
    let held: AsyncStream<Void>
    private let heldContinuation: AsyncStream<Void>.Continuation

    init() {
        (held, heldContinuation) = AsyncStream.makeStream(of: Void.self)
    }

    var calls: Int { state.withLock { $0.calls } }

    func send(_ request: URLRequest) async throws -> ServerResponse {
        let call = state.withLock { state -> Int in
            state.calls += 1
            return state.calls
        }
        guard call == 2 else { return ServerResponse(status: 204) }
        await withCheckedContinuation { continuation in
            state.withLock { $0.waiting = continuation }
            heldContinuation.yield()
        }
        throw URLError(.timedOut)
    }

    /// Lets the held probe go.
    func release() {
        state.withLock { state -> CheckedContinuation<Void, Never>? in
            defer { state.waiting = nil }
            return state.waiting
        }?.resume()
    }
}
