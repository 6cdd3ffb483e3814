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
/// monitor is given (the system's), the probe runs only while `base` says online.
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
        // The protocol hands out a stream, so its producer is a task of its own, living exactly as
        // long as the consumer's iteration: ending or cancelling that iteration cancels it. Gated by
        // a base monitor, the probing is a child of it, ended before the next base status is told.
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
                    // Online: probe until the base says something else, and end the probing before
                    // that is told, so that no probe's answer follows it.
                    status = await withTaskGroup(of: Void.self) { group in
                        group.addTask { await probeLoop(continuation) }
                        let next = await statuses.next()
                        group.cancelAll()
                        return next
                    }
                }
            } else {
                await probeLoop(continuation)
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    private func probeLoop(_ continuation: AsyncStream<ConnectivityStatus>.Continuation) async {
        var last: ConnectivityStatus?
        var failures = 0
        while !Task.isCancelled {
            let status: ConnectivityStatus = await probe() ? .online : .offline
            if Task.isCancelled { return }
            if status != last {
                last = status
                continuation.yield(status)
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
