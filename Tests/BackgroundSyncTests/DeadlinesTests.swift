@testable import BackgroundSyncPostgres
import Testing

/// The shared deadline table behind a PostgreSQL store's waits for a pooled connection.
@Suite("Deadlines of pool waits", .timeLimit(.minutes(1)))
struct DeadlinesTests {
    @Test func aWaitEndsAtItsDeadlineWhileTheLoopRuns() async {
        let deadlines = Deadlines()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await deadlines.run(every: .milliseconds(10)) }
            let start = ContinuousClock.now
            let passed = await deadlines.wait(until: start + .milliseconds(30))
            #expect(passed)
            #expect(ContinuousClock.now >= start + .milliseconds(30))
            group.cancelAll()
        }
    }

    @Test func aCancelledWaitEndsAtOnceAsNotTimedOut() async {
        let deadlines = Deadlines()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await deadlines.run(every: .milliseconds(10)) }
            let waiter = Task { await deadlines.wait(until: .now + .seconds(3600)) }
            while deadlines.waiting == 0 { await Task.yield() }
            waiter.cancel()
            #expect(await waiter.value == false)
            #expect(deadlines.waiting == 0)
            // Cancelled before it waits: it does not wait at all.
            let early = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return await deadlines.wait(until: .now + .seconds(3600))
            }
            #expect(await early.value == false)
            group.cancelAll()
        }
    }

    @Test func whenTheLoopStopsWaitsLeftEndAndLaterOnesAreNotTimed() async {
        let deadlines = Deadlines()
        let loop = Task { await deadlines.run(every: .milliseconds(10)) }
        let waiting = Task { await deadlines.wait(until: .now + .seconds(3600)) }
        while deadlines.waiting == 0 { await Task.yield() }
        // The loop ends only once cancelled; the wait left then ends, as not timed out.
        loop.cancel()
        await loop.value
        #expect(await waiting.value == false)
        #expect(await deadlines.wait(until: .now + .seconds(3600)) == false)
    }
}
