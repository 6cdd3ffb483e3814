import Foundation

/// Shares commits between concurrent writers: while one transaction is being committed, the
/// writes that arrive queue up, and the next transaction commits them all at once. Each caller
/// still returns only after *its* write is committed, so durability is unchanged, but N
/// concurrent producers pay for far fewer than N fsyncs.
///
/// The first writer to arrive when none is committing becomes the leader and commits in its own
/// task (no task is spawned, no thread hop is added for a lone producer). When its own write is
/// committed and others are waiting, it hands the lead to the oldest waiter and returns.
/// A batch that fails is retried one write per transaction, so one bad write fails alone.
final class GroupCommit<Item: Sendable, Output: Sendable>: Sendable {
    typealias Commit = @Sendable ([Item]) async throws -> [Output]

    /// What a waiting writer is woken with.
    private enum Wake {
        case committed(Output)
        case lead
    }

    private struct Waiter {
        var item: Item
        var continuation: CheckedContinuation<Wake, any Error>
    }

    private struct State {
        var waiting: [Waiter] = []
        var leading = false
    }

    private let state = Locked(State())
    private let maxBatch: Int
    private let commit: Commit

    /// - Parameters:
    ///   - maxBatch: the most writes one transaction takes.
    ///   - commit: writes the items in one transaction and returns one output per item, in order.
    init(maxBatch: Int = 512, commit: @escaping Commit) {
        self.maxBatch = maxBatch
        self.commit = commit
    }

    /// The writes waiting for the next transaction (for tests).
    var waitingCount: Int { state.withLock { $0.waiting.count } }

    /// Writes `item` in the next transaction and returns its output once committed.
    func submit(_ item: Item) async throws -> Output {
        let becameLeader = state.withLock { state -> Bool in
            if state.leading { return false }
            state.leading = true
            return true
        }
        if becameLeader {
            return try await lead(with: item)
        }
        let wake = try await withCheckedThrowingContinuation { continuation in
            let leadNow = state.withLock { state -> Bool in
                // The leader may have finished between the two checks.
                if !state.leading {
                    state.leading = true
                    return true
                }
                state.waiting.append(Waiter(item: item, continuation: continuation))
                return false
            }
            if leadNow { continuation.resume(returning: .lead) }
        }
        switch wake {
        case .committed(let output):
            return output
        case .lead:
            return try await lead(with: item)
        }
    }

    /// Commits `item` with the writes waiting now, then passes the lead on (or gives it up).
    private func lead(with item: Item) async throws -> Output {
        let others = state.withLock { state -> [Waiter] in
            let batch = Array(state.waiting.prefix(maxBatch - 1))
            state.waiting.removeFirst(batch.count)
            return batch
        }
        let result: Result<Output, any Error>
        do {
            let items = [item] + others.map(\.item)
            let outputs: [Output]
            if others.isEmpty {
                outputs = try await commit(items)
            } else {
                // The leader carries other callers' writes: its own cancellation must not fail
                // them, so the shared commit runs in a task of its own.
                outputs = try await Task { try await commit(items) }.value
            }
            result = .success(outputs[0])
            for (waiter, output) in zip(others, outputs.dropFirst()) {
                waiter.continuation.resume(returning: .committed(output))
            }
        } catch {
            // Retry each write alone so that one bad write fails alone (the others' in tasks of
            // their own, for the same reason as above).
            result = await Result(catching: { try await commit([item])[0] })
            for waiter in others {
                do {
                    let output = try await Task { try await commit([waiter.item])[0] }.value
                    waiter.continuation.resume(returning: .committed(output))
                } catch {
                    waiter.continuation.resume(throwing: error)
                }
            }
        }
        let next = state.withLock { state -> Waiter? in
            if state.waiting.isEmpty {
                state.leading = false
                return nil
            }
            return state.waiting.removeFirst()
        }
        // The next leader commits its own write with whatever queued up meanwhile.
        next?.continuation.resume(returning: .lead)
        return try result.get()
    }
}

extension Result where Failure == any Error {
    /// Captures the outcome of an async throwing body.
    fileprivate init(catching body: () async throws -> Success) async {
        do {
            self = .success(try await body())
        } catch {
            self = .failure(error)
        }
    }
}
