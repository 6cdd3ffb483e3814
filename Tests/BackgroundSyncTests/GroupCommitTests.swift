@testable import BackgroundSync
import Dispatch
import Foundation
import Testing

@Suite("GroupCommit", .timeLimit(.minutes(1)))
struct GroupCommitTests {
    /// Waits, without sleeping, until `condition` holds (it flips as other tasks run).
    private func until(_ condition: () -> Bool) async {
        while !condition() { await Task.yield() }
    }

    /// A serial queue standing in for the database's writer; transactions record their batches
    /// when they commit, and the batches whose first item is in `holding` wait for `release()`
    /// before committing.
    private final class Writer: Sendable {
        let queue = DispatchQueue(label: "test-writer")
        let batches = Box<[[Int]]>([])
        /// Every call that wrote items in an open transaction.
        let appends = Box<[[Int]]>([])
        let holding: Set<Int>
        private let gate = DispatchSemaphore(value: 0)

        init(holding: Set<Int>) { self.holding = holding }

        func groupCommit(gatherDelay: Duration? = .seconds(60), fail: Int? = nil) -> GroupCommit<Void, Int, Int> {
            var delay: (@Sendable (Duration) -> Duration)?
            if let gatherDelay { delay = { _ in gatherDelay } }
            return GroupCommit(
                gatherDelay: delay,
                schedule: { [queue] work in queue.async { work(()) } },
                transaction: { [self] _, writes in
                    open.withLock { $0 = [] }
                    try writes()
                    let items = open.current
                    batches.withLock { $0.append(items) }
                    if let first = items.first, holding.contains(first) { gate.wait() }
                    if let fail, items.contains(fail) { throw CancellationError() }
                },
                append: { [self] _, items in
                    appends.withLock { $0.append(items) }
                    open.withLock { $0 += items }
                    return items.map { $0 * 10 }
                })
        }

        /// The items written in the transaction being run.
        private let open = Box<[Int]>([])

        var held: Int { batches.withLock { $0.filter { holding.contains($0.first ?? -1) }.count } }
        func release() { gate.signal() }
    }

    @Test func writesWaitingDuringACommitShareTheNextOneEvenIfTheirTaskIsCancelled() async throws {
        let writer = Writer(holding: [0])
        let commit = writer.groupCommit()
        let first = Task { try await commit.submit(0) }
        await until { writer.held == 1 }
        let cancelled = Task { try await commit.submit(1) }
        await until { commit.waitingCount == 1 }
        let second = Task { try await commit.submit(2) }
        let third = Task { try await commit.submit(3) }
        await until { commit.waitingCount == 3 }
        cancelled.cancel()
        writer.release()

        #expect(try await first.value == 0)
        // 0's caller and the three that came during its commit are this round's writers: the
        // next transaction, open with 1, 2 and 3, takes a fourth write before committing.
        let fourth = Task { try await commit.submit(4) }
        #expect(try await cancelled.value == 10, "a submitted write is committed and reported, cancelled or not")
        #expect(try await second.value == 20)
        #expect(try await third.value == 30)
        #expect(try await fourth.value == 40)
        #expect(writer.batches.current.map { $0.sorted() } == [[0], [1, 2, 3, 4]])
        #expect(writer.appends.current.map { $0.sorted() } == [[0], [1, 2, 3], [4]], "what waits is written at once, what comes later as it comes")
    }

    @Test func afterABatchOfNWithMArrivingDuringItsCommitTheNextCommitGathersNPlusMWrites() async throws {
        let writer = Writer(holding: [0, 1])
        let commit = writer.groupCommit()
        let first = Task { try await commit.submit(0) }
        await until { writer.held == 1 }
        var batch = [1, 2, 3].map { item in Task { try await commit.submit(item) } }
        await until { commit.waitingCount == 3 }
        writer.release()
        // [0] and three arrivals: the next transaction stays open for four writes.
        _ = try await first.value
        batch.append(Task { try await commit.submit(4) })
        await until { writer.held == 2 }  // [1, 2, 3, 4] is committing
        let early = Task { try await commit.submit(5) }
        await until { commit.waitingCount == 1 }
        writer.release()
        for task in batch { _ = try await task.value }
        // The four callers of the last batch and 5, which came while it committed, are the
        // writers of this round: the next transaction stays open for five writes.
        let late = [6, 7, 8, 9].map { item in Task { try await commit.submit(item) } }
        #expect(try await early.value == 50)
        for task in late { _ = try await task.value }
        // Tasks started together may reach the commit in any order: a batch is compared as a set.
        #expect(writer.batches.current.map { $0.sorted() } == [[0], [1, 2, 3, 4], [5, 6, 7, 8, 9]])
    }

    @Test func withoutGatheringTheNextCommitStartsAtOnce() async throws {
        let writer = Writer(holding: [0, 1])
        let commit = writer.groupCommit(gatherDelay: nil)
        let first = Task { try await commit.submit(0) }
        await until { writer.held == 1 }
        let batch = [1, 2, 3].map { item in Task { try await commit.submit(item) } }
        await until { commit.waitingCount == 3 }
        writer.release()
        await until { writer.held == 2 }
        let early = Task { try await commit.submit(4) }
        await until { commit.waitingCount == 1 }
        writer.release()
        // Nobody waits for the last batch's callers: 4 goes alone, without waiting for them.
        #expect(try await early.value == 40)
        for task in batch { _ = try await task.value }
        _ = try await first.value
        #expect(writer.batches.current.map { $0.sorted() } == [[0], [1, 2, 3], [4]])
    }

    @Test func aGatheringThatDoesNotFillCommitsAfterTheDelay() async throws {
        let writer = Writer(holding: [0, 1])
        let commit = writer.groupCommit(gatherDelay: .milliseconds(1))
        let first = Task { try await commit.submit(0) }
        await until { writer.held == 1 }
        let batch = [1, 2].map { item in Task { try await commit.submit(item) } }
        await until { commit.waitingCount == 2 }
        writer.release()
        await until { writer.held == 2 }
        let alone = Task { try await commit.submit(3) }
        await until { commit.waitingCount == 1 }
        writer.release()
        // Nobody else comes: 3 is committed once the delay has passed.
        #expect(try await alone.value == 30)
        for task in batch { _ = try await task.value }
        _ = try await first.value
        #expect(writer.batches.current.map { $0.sorted() } == [[0], [1, 2], [3]])
    }

    @Test func aLoneWriterNeverWaits() async throws {
        let writer = Writer(holding: [])
        // A delay no test could wait out: a lone writer must not gather.
        let commit = writer.groupCommit(gatherDelay: .seconds(3600))
        for item in 0..<20 {
            #expect(try await commit.submit(item) == item * 10)
        }
        #expect(writer.batches.current == (0..<20).map { [$0] })
    }

    @Test func aFailingWriteFailsAlone() async throws {
        let writer = Writer(holding: [])
        let commit = writer.groupCommit(gatherDelay: .milliseconds(1), fail: 13)
        try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
            for item in 10..<16 {
                group.addTask { (item, (try? await commit.submit(item)) != nil) }
            }
            for try await (item, succeeded) in group {
                #expect(succeeded == (item != 13))
            }
        }
    }
}
