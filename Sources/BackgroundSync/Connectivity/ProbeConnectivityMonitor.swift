import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Connectivity as seen by a server: the monitor sends a request to a URL and reports `online`
/// when any HTTP response comes back, `offline` when none does. The network may be up while the
/// server is down; this monitor tells them apart.
///
/// While offline it probes again with exponential backoff (``RetryPolicy``, without jitter by
/// default: 1 s, 2 s, 4 s… up to 1 minute); while online, every ``onlineInterval``. When a `base`
/// monitor is given (the system's), the probe runs only while `base` says online: its offline is
/// told at once, and a probe then under way is cancelled and its answer not told.
public struct ProbeConnectivityMonitor: ConnectivityMonitor {
    /// The probed URL.
    public var url: URL
    /// The HTTP method of the probe. Default: `HEAD`.
    public var method: String
    /// The probe's timeout. Default: 5 seconds.
    public var timeout: Duration
    /// The backoff between probes while offline.
    public var backoff: RetryPolicy
    /// The interval between probes while online. Default: 60 seconds.
    public var onlineInterval: Duration
    /// The transport used for probes.
    public var transport: any HTTPTransport
    /// The clock for the waits.
    public var clock: any WallClock
    /// A monitor that gates probing (no probe while it says offline), or `nil`.
    public var base: (any ConnectivityMonitor)?

    /// Creates a probe monitor; every parameter but `url` has its default.
    public init(
        url: URL,
        method: String = "HEAD",
        timeout: Duration = .seconds(5),
        backoff: RetryPolicy = RetryPolicy(initialDelay: .seconds(1), maxDelay: .seconds(60), jitter: false),
        onlineInterval: Duration = .seconds(60),
        transport: any HTTPTransport = URLSessionTransport(),
        clock: any WallClock = SystemWallClock(),
        base: (any ConnectivityMonitor)? = nil
    ) {
        self.url = url
        self.method = method
        self.timeout = timeout
        self.backoff = backoff
        self.onlineInterval = onlineInterval
        self.transport = transport
        self.clock = clock
        self.base = base
    }

    /// Sends one probe; `true` when a response came back.
    public func probe() async -> Bool {
        var request = URLRequest(url: url, timeoutInterval: timeout.timeInterval)
        request.httpMethod = method
        return (try? await transport.send(request)) != nil
    }

    public func statusUpdates() -> AsyncStream<ConnectivityStatus> {
        let (stream, continuation) = AsyncStream.makeStream(of: ConnectivityStatus.self)
        // The protocol hands out a stream, so its producer is a task of its own: ending or cancelling
        // the consumer's iteration cancels it, and it ends once its probe does (at once with a
        // transport that gives up when cancelled). Gated by a base monitor, each online period
        // probes in a child task whose word stops counting, under a lock, the moment the base says
        // something else: a base offline is told at once, and no probe's answer follows it.
        let task = Task {
            if let base {
                var statuses = base.statusUpdates().makeAsyncIterator()
                var status = await statuses.next()
                while let current = status {
                    if current == .offline {
                        continuation.yield(.offline)
                        status = await statuses.next()
                        continue
                    }
                    let heard = Locked(true)
                    status = await withTaskGroup(of: Void.self) { group in
                        group.addTask { await probeLoop(continuation, heard: heard) }
                        let next = await statuses.next()
                        heard.withLock { $0 = false }
                        if next == .offline { continuation.yield(.offline) }
                        group.cancelAll()
                        return next
                    }
                    // An offline is told already; what follows it is next.
                    if status == .offline { status = await statuses.next() }
                }
            } else {
                await probeLoop(continuation, heard: nil)
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// Probes until cancelled, telling each change of status while `heard` (if any) is true.
    private func probeLoop(_ continuation: AsyncStream<ConnectivityStatus>.Continuation, heard: Locked<Bool>?) async {
        var last: ConnectivityStatus?
        var failures = 0
        while !Task.isCancelled {
            let status: ConnectivityStatus = await probe() ? .online : .offline
            if Task.isCancelled { return }
            if status != last {
                last = status
                if let heard {
                    guard heard.withLock({ stillHeard in
                        if stillHeard { continuation.yield(status) }
                        return stillHeard
                    }) else { return }
                } else {
                    continuation.yield(status)
                }
            }
            let wait: Duration
            if status == .online {
                failures = 0
                wait = onlineInterval
            } else {
                failures += 1
                var random = SystemRandomNumberGenerator()
                wait = backoff.delay(afterAttempts: failures, using: &random)
            }
            do {
                try await clock.sleep(until: clock.now.addingTimeInterval(wait.timeInterval))
            } catch {
                return
            }
        }
    }
}
