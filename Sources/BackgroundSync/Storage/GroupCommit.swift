import Foundation

/// Shares commits between concurrent writers: while one transaction is being committed, the
/// writes that arrive queue up, and the next transaction commits them all at once. Each caller
/// still returns only after *its* write is committed, so durability is unchanged, but N
/// concurrent producers pay for far fewer than N fsyncs.
///
/// Batches are taken and committed on the database's writer (its serial queue), not in the
/// callers' tasks: a batch is collected only when the writer is ready for it, so everything that
/// arrived meanwhile goes in, and no task hop or hand-off separates one commit from the next.
/// After each batch the drain is scheduled again rather than looped, so other writes queued on the
/// writer (replay claims, deletions) take their turn between batches.
///
/// Under contention the writer gathers before committing again, as PostgreSQL's `commit_delay` and
/// MySQL's `binlog_group_commit_sync_delay` do: once a batch of N writes is committed, its N callers
/// are the likeliest next writers, so the next batch starts when N writes wait, or when as long as
/// that commit took has passed, whichever comes first. Without that, a commit's callers always come
/// back during the next commit and the producers split into two alternating half-size batches. A
/// lone writer never waits (its batch had one write).
///
/// A submitted write is committed even if the caller's task is cancelled meanwhile (its result is
/// still returned): a write that was committed is never reported as failed. A batch that fails is
/// retried one write per transaction, so one bad write fails alone.
final class GroupCommit<Context, Item: Sendable, Output: Sendable>: Sendable {
    /// Writes the items in one transaction and returns one output per item, in order. Runs on the
    /// writer.
    typealias Commit = @Sendable (Context, [Item]) throws -> [Output]
    /// Runs `work` on the writer, after the work already queued there.
    typealias Schedule = @Sendable (_ work: @escaping @Sendable (Context) -> Void) -> Void

    private struct Waiter {
        var item: Item
        var continuation: CheckedContinuation<Output, any Error>
    }

    /// What follows a drain.
    private enum Next {
        case idle
        case now
        case gather(Int)
    }

    private struct State {
        var waiting: [Waiter] = []
        /// A drain is scheduled on the writer or running.
        var scheduled = false
        /// While gathering: the number of waiting writes that starts the next batch at once.
        var gatherTarget: Int?
        /// Identifies the current gathering, so that a late timer does nothing.
        var gathering = 0
    }

    private let state = Locked(State())
    private let maxBatch: Int
    private let gatherDelay: (@Sendable (Duration) -> Duration)?
    private let schedule: Schedule
    private let commit: Commit

    /// - Parameters:
    ///   - maxBatch: the most writes one transaction takes.
    ///   - gatherDelay: how long to gather at most, given how long the last commit took
    ///     (default: as long, up to 10 ms); `nil` never gathers (for commits that are cheap, not
    ///     waiting for the disk, where gathering would only add latency).
    ///   - schedule: runs a drain on the writer.
    ///   - commit: writes a batch in one transaction.
    init(
        maxBatch: Int = 512,
        gatherDelay: (@Sendable (Duration) -> Duration)? = { min($0, .milliseconds(10)) },
        schedule: @escaping Schedule,
        commit: @escaping Commit
    ) {
        self.maxBatch = maxBatch
        self.gatherDelay = gatherDelay
        self.schedule = schedule
        self.commit = commit
    }

    /// The writes waiting for the next transaction (for tests).
    var waitingCount: Int { state.withLock { $0.waiting.count } }

    /// Writes `item` in the next transaction and returns its output once committed.
    func submit(_ item: Item) async throws -> Output {
        try await withCheckedThrowingContinuation { continuation in
            let start = state.withLock { state -> Bool in
                state.waiting.append(Waiter(item: item, continuation: continuation))
                if state.scheduled { return false }
                if let target = state.gatherTarget, state.waiting.count < target { return false }
                state.gatherTarget = nil
                state.scheduled = true
                return true
            }
            if start { schedule { [self] context in drain(context) } }
        }
    }

    /// Commits what is waiting now (up to `maxBatch`), then schedules itself again if more came.
    private func drain(_ context: Context) {
        let batch = state.withLock { state -> [Waiter] in
            let batch = Array(state.waiting.prefix(maxBatch))
            state.waiting.removeFirst(batch.count)
            return batch
        }
        guard !batch.isEmpty else { return finish(lastBatch: 0, took: .zero) }
        let start = ContinuousClock.now
        do {
            let outputs = try commit(context, batch.map(\.item))
            for (waiter, output) in zip(batch, outputs) {
                waiter.continuation.resume(returning: output)
            }
        } catch {
            for waiter in batch {
                do {
                    waiter.continuation.resume(returning: try commit(context, [waiter.item])[0])
                } catch {
                    waiter.continuation.resume(throwing: error)
                }
            }
        }
        finish(lastBatch: batch.count, took: ContinuousClock.now - start)
    }

    /// Schedules the next drain: now, after gathering (see the type's documentation), or not at
    /// all when nothing waits.
    private func finish(lastBatch: Int, took: Duration) {
        let next = state.withLock { state -> Next in
            let target = gatherDelay == nil ? 0 : min(lastBatch, maxBatch)
            if target > 1 && !state.waiting.isEmpty && state.waiting.count < target {
                // The last batch's callers have not come back yet (maybe none of them has).
                state.scheduled = false
                state.gatherTarget = target
                state.gathering &+= 1
                return .gather(state.gathering)
            }
            if state.waiting.isEmpty {
                state.scheduled = false
                return .idle
            }
            return .now
        }
        switch next {
        case .idle:
            return
        case .now:
            schedule { [self] context in drain(context) }
        case .gather(let gathering):
            let delay = gatherDelay?(took) ?? .zero
            DispatchQueue.global().asyncAfter(deadline: .now() + delay.timeInterval) { [self] in
                let start = state.withLock { state -> Bool in
                    guard state.gathering == gathering, state.gatherTarget != nil else { return false }
                    state.gatherTarget = nil
                    // Nobody came: the next write starts a batch at once.
                    if state.waiting.isEmpty { return false }
                    state.scheduled = true
                    return true
                }
                if start { schedule { [self] context in drain(context) } }
            }
        }
    }
}

