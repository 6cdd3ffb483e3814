import Foundation

/// Shares commits between concurrent writers: while one transaction is being committed, the
/// writes that arrive queue up, and the next transaction commits them all at once. Each caller
/// still returns only after *its* write is committed, so durability is unchanged, but N
/// concurrent producers pay for far fewer than N fsyncs.
///
/// A batch that fails is retried one write per transaction, so one bad write fails alone.
final class GroupCommit<Item: Sendable, Output: Sendable>: Sendable {
    typealias Commit = @Sendable ([Item]) async throws -> [Output]

    private struct Waiter {
        var item: Item
        var continuation: CheckedContinuation<Output, any Error>
    }

    private struct State {
        var waiting: [Waiter] = []
        var flushing = false
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

    /// Writes `item` in the next transaction and returns its output once committed.
    func submit(_ item: Item) async throws -> Output {
        try await withCheckedThrowingContinuation { continuation in
            let lead = state.withLock { state -> Bool in
                state.waiting.append(Waiter(item: item, continuation: continuation))
                if state.flushing { return false }
                state.flushing = true
                return true
            }
            if lead {
                Task { await self.flush() }
            }
        }
    }

    private func flush() async {
        while true {
            let batch = state.withLock { state -> [Waiter] in
                let batch = Array(state.waiting.prefix(maxBatch))
                state.waiting.removeFirst(batch.count)
                if batch.isEmpty { state.flushing = false }
                return batch
            }
            if batch.isEmpty { return }
            do {
                let outputs = try await commit(batch.map(\.item))
                for (waiter, output) in zip(batch, outputs) {
                    waiter.continuation.resume(returning: output)
                }
            } catch {
                if batch.count == 1 {
                    batch[0].continuation.resume(throwing: error)
                    continue
                }
                for waiter in batch {
                    do {
                        let output = try await commit([waiter.item])
                        waiter.continuation.resume(returning: output[0])
                    } catch {
                        waiter.continuation.resume(throwing: error)
                    }
                }
            }
        }
    }
}
