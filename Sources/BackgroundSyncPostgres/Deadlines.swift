import BackgroundSync

/// Waits that end at a deadline, all timed by one loop: the time limit of each wait for a pooled
/// connection costs a lock and a continuation, not a timer of its own.
final class Deadlines: Sendable {
    private typealias Wait = (deadline: ContinuousClock.Instant, continuation: UnsafeContinuation<Bool, Never>)

    private struct State {
        var next: UInt64 = 0
        var waits: [UInt64: Wait] = [:]
        /// ``run(every:)`` ended: no deadline is timed any more.
        var stopped = false
    }

    private let state = Locked(State())

    /// How many waits are timed now.
    var waiting: Int { state.withLock { $0.waits.count } }

    /// Waits until `deadline` has passed (found by ``run(every:)`` at its next look, so up to one
    /// interval late) and returns `true`; returns `false` at once when the calling task is
    /// cancelled, or when ``run(every:)`` is not running any more (then no deadline is timed).
    func wait(until deadline: ContinuousClock.Instant) async -> Bool {
        let id = state.withLock { state -> UInt64 in
            defer { state.next &+= 1 }
            return state.next
        }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Bool, Never>) in
                let registered = state.withLock { state -> Bool in
                    // Checked under the lock: a cancellation handler that ran before finds nothing
                    // to resume, and one that runs after finds the wait.
                    guard !Task.isCancelled, !state.stopped else { return false }
                    state.waits[id] = (deadline, continuation)
                    return true
                }
                if !registered { continuation.resume(returning: false) }
            }
        } onCancel: {
            state.withLock { $0.waits.removeValue(forKey: id) }?.continuation.resume(returning: false)
        }
    }

    /// Ends the waits whose deadline passed, looking every `interval`, until cancelled; the waits
    /// left then end (as not timed out), and later ones end at once.
    func run(every interval: Duration) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            let now = ContinuousClock.now
            let due = state.withLock { state -> [Wait] in
                let due = state.waits.filter { $0.value.deadline <= now }
                for id in due.keys { state.waits.removeValue(forKey: id) }
                return Array(due.values)
            }
            for wait in due { wait.continuation.resume(returning: true) }
        }
        let left = state.withLock { state -> [Wait] in
            state.stopped = true
            defer { state.waits = [:] }
            return Array(state.waits.values)
        }
        for wait in left { wait.continuation.resume(returning: false) }
    }
}
