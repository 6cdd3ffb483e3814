@testable import BackgroundSync
import Foundation
import Testing

@Suite("GroupCommit", .timeLimit(.minutes(1)))
struct GroupCommitTests {
    /// Waits, without sleeping, until `condition` holds (it flips as other tasks run).
    private func until(_ condition: () -> Bool) async {
        while !condition() { await Task.yield() }
    }

    @Test func aCancelledLeaderDoesNotFailTheWritesItCarries() async throws {
        let (gate, open) = AsyncStream.makeStream(of: Void.self)
        let entered = Box(false)
        let batches = Box<[[Int]]>([])
        let commit = GroupCommit<Int, Int> { items in
            let first = batches.withLock { list -> Bool in
                list.append(items)
                return list.count == 1
            }
            if first {
                entered.withLock { $0 = true }
                for await _ in gate { break }
            }
            // As GRDB does: a cancelled task's write does not run.
            try Task.checkCancellation()
            return items.map { $0 * 10 }
        }
        let leader = Task { try await commit.submit(0) }
        await until { entered.current }
        let carrier = Task { try await commit.submit(1) }
        await until { commit.waitingCount == 1 }
        let second = Task { try await commit.submit(2) }
        let third = Task { try await commit.submit(3) }
        await until { commit.waitingCount == 3 }
        carrier.cancel()
        open.yield()

        #expect(try await leader.value == 0)
        #expect(try await second.value == 20, "written although the task that carried it was cancelled")
        #expect(try await third.value == 30)
        _ = try? await carrier.value
        #expect(batches.current.first == [0])
        #expect(batches.current.dropFirst().first == [1, 2, 3], "the three waiting writes shared one commit")
    }

    @Test func aFailingWriteFailsAlone() async throws {
        struct Bad: Error {}
        let commit = GroupCommit<Int, Int> { items in
            if items.contains(13) { throw Bad() }
            return items
        }
        try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
            for item in 10..<16 {
                group.addTask { ((item), (try? await commit.submit(item)) != nil) }
            }
            for try await (item, succeeded) in group {
                #expect(succeeded == (item != 13))
            }
        }
    }
}
