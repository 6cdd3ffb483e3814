import Foundation

/// The retry timer of a ``SyncService``: runs as a child task of the service and calls `fire` when
/// the deadline last ``set(_:)`` comes; a new deadline replaces the old one at once.
final class SyncTimer: Sendable {
    private struct State {
        var deadline: Date?
        /// Moves on at each ``set(_:)``, so a sleep for an old deadline fires nothing.
        var generation = 0
        /// The timer waiting for a new deadline.
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Locked(State())

    /// Sets the deadline (`nil`: none).
    func set(_ deadline: Date?) {
        let waiter = state.withLock { state in
            state.deadline = deadline
            state.generation += 1
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Sleeps on `clock` until each deadline and calls `fire`, until the task is cancelled.
    func run(clock: any WallClock, fire: @escaping @Sendable () -> Void) async {
        while !Task.isCancelled {
            let (deadline, generation) = state.withLock { ($0.deadline, $0.generation) }
            guard let deadline else {
                await change(since: generation)
                continue
            }
            let slept = await withTaskGroup(of: Bool.self) { group in
                group.addTask { (try? await clock.sleep(until: deadline)) != nil }
                group.addTask {
                    await self.change(since: generation)
                    return false
                }
                let first = await group.next() ?? false
                group.cancelAll()
                return first
            }
            let current = state.withLock { state -> Bool in
                guard state.generation == generation else { return false }
                state.deadline = nil
                return true
            }
            if slept && current { fire() }
        }
    }

    /// Returns once the deadline changed after `generation`, or the task is cancelled.
    private func change(since generation: Int) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let changed = state.withLock { state -> Bool in
                    if state.generation != generation || Task.isCancelled { return true }
                    state.waiter = continuation
                    return false
                }
                if changed { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }
}
