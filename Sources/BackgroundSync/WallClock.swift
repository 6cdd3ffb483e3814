import Foundation

/// Wall-clock time, injected so that tests of backoff, expiry and timers never sleep.
///
/// Queues store times in the database (when an entry was queued, when its next attempt is due,
/// when a lease expires), and these must mean the same thing to another process and after a
/// restart, so the clock speaks in `Date`s rather than in a monotonic `Clock`'s instants.
public protocol WallClock: Sendable {
    /// The current time.
    var now: Date { get }
    /// Suspends until `deadline` (returns at once if it passed). Throws `CancellationError` when
    /// the task is cancelled.
    func sleep(until deadline: Date) async throws
}

/// The system's clock.
public struct SystemWallClock: WallClock {
    /// Creates the system clock.
    public init() {}

    public var now: Date { Date() }

    public func sleep(until deadline: Date) async throws {
        let seconds = deadline.timeIntervalSinceNow
        if seconds > 0 {
            try await Task.sleep(for: .milliseconds(Int64((seconds * 1000).rounded(.up))))
        } else {
            try Task.checkCancellation()
        }
    }
}

extension Duration {
    /// The duration in seconds, as a `TimeInterval`.
    package var timeInterval: TimeInterval {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
