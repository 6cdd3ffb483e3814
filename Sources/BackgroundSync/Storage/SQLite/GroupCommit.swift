import Foundation

/// Shares commits between concurrent writers: while one transaction is being committed, the
/// writes that arrive queue up, and the next transaction commits them all at once. Each caller
/// still returns only after *its* write is committed, so durability is unchanged, but N
/// concurrent producers pay for far fewer than N fsyncs.
///
/// Batches are written and committed on the database's writer (its serial queue), not in the
/// callers' tasks: a batch is collected only when the writer is ready for it, so everything that
/// arrived meanwhile goes in, and no task hop or hand-off separates one commit from the next.
/// After each batch the drain is scheduled again rather than looped, so other writes queued on the
/// writer (replay claims, deletions) take their turn between batches.
///
/// Under contention the writer gathers before committing again, as PostgreSQL's `commit_delay` and
/// MySQL's `binlog_group_commit_sync_delay` do. The writers of a round are the batch's callers and
/// those that arrived while it committed; they are the likeliest next writers, so the next
/// transaction stays open until as many writes are in, or until as long as that commit took has
/// passed, whichever comes first. The writes are appended to the open transaction as they arrive,
/// so their statements run while the others are still on their way, and the commit follows the last
/// one at once. Without gathering, a commit's callers come back during the next commit and the
/// producers split into alternating part-size batches. A lone writer never waits.
///
/// A submitted write is committed even if the caller's task is cancelled meanwhile (its result is
/// still returned): a write that was committed is never reported as failed. A batch that fails is
/// retried one write per transaction, so one bad write fails alone.
final class GroupCommit<Context, Item: Sendable, Output: Sendable>: Sendable {
    /// Opens a transaction, runs `body` in it and commits it (rolls back and throws if `body` or
    /// the commit throws). Runs on the writer.
    typealias Transaction = @Sendable (Context, _ body: () throws -> Void) throws -> Void
    /// Writes items in the open transaction and returns one output per item, in order. Runs on
    /// the writer.
    typealias Append = @Sendable (Context, [Item]) throws -> [Output]
    /// Runs `work` on the writer, after the work already queued there.
    typealias Schedule = @Sendable (_ work: @escaping @Sendable (Context) -> Void) -> Void

    private struct Waiter {
        var item: Item
        /// Unchecked: every path of `drain` resumes each waiter exactly once, and the checked kind
        /// costs the writer a lock and an allocation per write.
        var continuation: UnsafeContinuation<Output, any Error>
    }

    /// How the next batch gathers.
    private struct Gathering {
        /// The number of writes that ends it.
        var target: Int
        /// When it ends, however many writes came.
        var deadline: DispatchTime
    }

    private struct State {
        var waiting: [Waiter] = []
        /// A drain is scheduled on the writer or running.
        var scheduled = false
        /// Set when the last batch had several writers: the next drain gathers.
        var gathering: Gathering?
        /// The drain is blocked waiting for writes; the next submit signals `arrival`.
        var drainWaits = false
    }

    private let state = Locked(State())
    /// Wakes a drain that waits for writes (signalled only while `drainWaits` is set).
    private let arrival = DispatchSemaphore(value: 0)
    private let maxBatch: Int
    private let gatherDelay: (@Sendable (Duration) -> Duration)?
    private let schedule: Schedule
    private let transaction: Transaction
    private let append: Append

    /// - Parameters:
    ///   - maxBatch: the most writes one transaction takes.
    ///   - gatherDelay: how long to gather at most, given how long the last commit took
    ///     (default: as long, up to 10 ms); `nil` never gathers (for commits that are cheap, not
    ///     waiting for the disk, where gathering would only add latency).
    ///   - schedule: runs a drain on the writer.
    ///   - transaction: runs a batch's writes in one transaction.
    ///   - append: writes items in the open transaction.
    init(
        maxBatch: Int = 512,
        gatherDelay: (@Sendable (Duration) -> Duration)? = { min($0, .milliseconds(10)) },
        schedule: @escaping Schedule,
        transaction: @escaping Transaction,
        append: @escaping Append
    ) {
        self.maxBatch = maxBatch
        self.gatherDelay = gatherDelay
        self.schedule = schedule
        self.transaction = transaction
        self.append = append
    }

    /// The writes waiting for the writer to take them (for tests).
    var waitingCount: Int { state.withLock { $0.waiting.count } }

    /// Writes `item` in the next transaction and returns its output once committed.
    func submit(_ item: Item) async throws -> Output {
        try await withUnsafeThrowingContinuation { continuation in
            let (start, wake) = state.withLock { state -> (Bool, Bool) in
                state.waiting.append(Waiter(item: item, continuation: continuation))
                if state.scheduled {
                    defer { state.drainWaits = false }
                    return (false, state.drainWaits)
                }
                state.scheduled = true
                return (true, false)
            }
            if wake { arrival.signal() }
            if start { schedule { [self] context in drain(context) } }
        }
    }

    /// Writes one batch in one transaction — what waits now, then, when gathering, what arrives
    /// until the target or the deadline — then schedules the next drain.
    private func drain(_ context: Context) {
        let gathering = state.withLock { state in
            defer { state.gathering = nil }
            return state.gathering
        }
        // Nothing came before the deadline: the drain ends and the next write starts one.
        var batch = take(until: gathering?.deadline, idleIfNone: true)
        guard !batch.isEmpty else { return }
        var outputs: [Output] = []
        var commitStart = ContinuousClock.now
        var arrivedDuringCommit = 0
        do {
            try transaction(context) {
                outputs = try append(context, batch.map(\.item))
                if let gathering {
                    while batch.count < min(gathering.target, maxBatch) {
                        let more = take(until: gathering.deadline, idleIfNone: false, limit: maxBatch - batch.count)
                        if more.isEmpty { break }
                        batch += more
                        outputs += try append(context, more.map(\.item))
                    }
                }
                commitStart = .now
            }
            // Whoever arrived during the commit is a writer other than the batch's callers.
            arrivedDuringCommit = state.withLock { $0.waiting.count }
            for (waiter, output) in zip(batch, outputs) {
                waiter.continuation.resume(returning: output)
            }
        } catch {
            for waiter in batch {
                do {
                    var output: [Output] = []
                    try transaction(context) { output = try append(context, [waiter.item]) }
                    waiter.continuation.resume(returning: output[0])
                } catch {
                    waiter.continuation.resume(throwing: error)
                }
            }
        }
        finish(writers: batch.count + arrivedDuringCommit, took: ContinuousClock.now - commitStart)
    }

    /// Takes up to `limit` waiting writes; if none waits, waits for one until `deadline` (not at
    /// all when `nil`). With `idleIfNone`, finding none ends the drain, atomically with the check,
    /// so that the next submit schedules a new one.
    private func take(until deadline: DispatchTime?, idleIfNone: Bool, limit: Int? = nil) -> [Waiter] {
        while true {
            let taken = state.withLock { state -> [Waiter]? in
                if !state.waiting.isEmpty {
                    let limit = limit ?? maxBatch
                    if state.waiting.count <= limit {
                        // All of them: hand the array over rather than copy its elements.
                        defer { state.waiting = [] }
                        return state.waiting
                    }
                    let batch = Array(state.waiting.prefix(limit))
                    state.waiting.removeFirst(batch.count)
                    return batch
                }
                guard let deadline, DispatchTime.now() < deadline else {
                    if idleIfNone { state.scheduled = false }
                    return []
                }
                state.drainWaits = true
                return nil
            }
            if let taken { return taken }
            // `nil` comes only with a deadline still ahead: wait for a submit until then.
            if let deadline, arrival.wait(timeout: deadline) == .timedOut {
                // A submit that cleared `drainWaits` signals: consume it so that no wake-up is left over.
                let signalled = state.withLock { state in
                    defer { state.drainWaits = false }
                    return !state.drainWaits
                }
                if signalled { arrival.wait() }
            }
        }
    }

    /// Schedules the next drain: gathering when the last batch had several writers (see the
    /// type's documentation), at once when writes wait, or not at all.
    private func finish(writers: Int, took: Duration) {
        let next = state.withLock { state -> Bool in
            let target = gatherDelay == nil ? 0 : min(writers, maxBatch)
            if target > 1 && state.waiting.count < target, let delay = gatherDelay?(took) {
                state.gathering = Gathering(target: target, deadline: .now() + delay.timeInterval)
                return true
            }
            if state.waiting.isEmpty {
                state.scheduled = false
                return false
            }
            return true
        }
        if next { schedule { [self] context in drain(context) } }
    }
}
