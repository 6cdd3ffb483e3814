import BackgroundSync
import Foundation

/// A clock that moves only when told to, for tests: ``advance(by:)`` wakes the sleepers whose
/// deadline has come, and ``sleepers`` lets a test wait until the code under test is asleep.
///
/// A replay on this clock trusts its checks of entries leased ahead for as long as the clock
/// stands still (a replay uses a check up to 20 ms old): a test that deletes or sets aside an entry
/// while a replay runs, and expects it not to be sent, advances the clock by more than that first.
public final class ManualWallClock: WallClock, @unchecked Sendable {
    // `@unchecked Sendable`: all state is behind `lock`.
    private let lock = NSLock()
    private var current: Date
    private var waiting: [UUID: (deadline: Date, continuation: CheckedContinuation<Void, any Error>)] = [:]
    private var sleeperWatchers: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []

    /// Creates a clock showing `start` (default: the current time, after which it stands still).
    public init(start: Date = Date()) {
        current = start
    }

    public var now: Date { lock.withLock { current } }

    /// The number of tasks sleeping on this clock.
    public var sleepers: Int { lock.withLock { waiting.count } }

    /// The earliest deadline of the sleepers, if any.
    public var nextDeadline: Date? { lock.withLock { waiting.values.map(\.deadline).min() } }

    /// Moves the clock forward and wakes the sleepers whose deadline has come.
    public func advance(by duration: Duration) {
        advance(to: now.addingTimeInterval(duration.timeInterval))
    }

    /// Moves the clock to `date` (never backwards) and wakes the sleepers whose deadline has come.
    public func advance(to date: Date) {
        let due = lock.withLock { () -> [CheckedContinuation<Void, any Error>] in
            current = max(current, date)
            let ids = waiting.filter { $0.value.deadline <= current }.map(\.key)
            return ids.compactMap { waiting.removeValue(forKey: $0)?.continuation }
        }
        due.forEach { $0.resume() }
    }

    /// Returns once at least `count` tasks sleep on this clock.
    public func waitForSleepers(_ count: Int = 1) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = lock.withLock { () -> Bool in
                if waiting.count >= count { return true }
                sleeperWatchers.append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    public func sleep(until deadline: Date) async throws {
        let id = UUID()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let (resumeNow, watchers) = lock.withLock { () -> (Bool, [CheckedContinuation<Void, Never>]) in
                    if deadline <= current || Task.isCancelled { return (true, []) }
                    waiting[id] = (deadline, continuation)
                    let ready = sleeperWatchers.filter { $0.count <= waiting.count }.map(\.continuation)
                    sleeperWatchers.removeAll { $0.count <= waiting.count }
                    return (false, ready)
                }
                watchers.forEach { $0.resume() }
                if resumeNow {
                    if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                    } else {
                        continuation.resume()
                    }
                }
            }
        } onCancel: {
            let continuation = lock.withLock { waiting.removeValue(forKey: id)?.continuation }
            continuation?.resume(throwing: CancellationError())
        }
    }
}
