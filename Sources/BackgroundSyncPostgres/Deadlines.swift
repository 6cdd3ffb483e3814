import BackgroundSync

/// Waits that end at a deadline, all timed by one loop: the time limit of each wait for a pooled
/// connection costs a lock and a continuation, not a timer of its own.
final class Deadlines: Sendable {
    private struct State {
        var next: UInt64 = 0
        var waits: [UInt64: (deadline: ContinuousClock.Instant, continuation: UnsafeContinuation<Void, Never>)] = [:]
    }

    private let state = Locked(State())

    /// Returns once `deadline` has passed (found by ``run(every:)`` at its next look) or the
    /// calling task is cancelled, whichever comes first.
    func wait(until deadline: ContinuousClock.Instant) async {
        let id = state.withLock { state -> UInt64 in
            defer { state.next &+= 1 }
            return state.next
        }
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                let registered = state.withLock { state -> Bool in
                    // Checked under the lock: a cancellation handler that ran before finds nothing
                    // to resume, and one that runs after finds the wait.
                    guard !Task.isCancelled else { return false }
                    state.waits[id] = (deadline, continuation)
                    return true
                }
                if !registered { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waits.removeValue(forKey: id) }?.continuation.resume()
        }
    }

    /// Ends the waits whose deadline passed, looking every `interval`, until cancelled; the waits
    /// left then end too.
    func run(every interval: Duration) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            let now = ContinuousClock.now
            resume { $0.deadline <= now || Task.isCancelled }
        }
    }

    private func resume(where due: ((deadline: ContinuousClock.Instant, continuation: UnsafeContinuation<Void, Never>)) -> Bool) {
        let ended = state.withLock { state in
            let ended = state.waits.filter { due($0.value) }
            for id in ended.keys { state.waits.removeValue(forKey: id) }
            return Array(ended.values)
        }
        for wait in ended { wait.continuation.resume() }
    }
}
