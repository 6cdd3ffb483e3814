import Foundation

extension ReplayRunner {
    /// One entry at a time, in queue order, stopping at the first that must be retried. The next
    /// entry is asked for while the current one is in flight, so the store's bookkeeping (leasing
    /// ahead, deleting deliveries) overlaps the send; the current entry is resolved, and
    /// ``QueueOptions/requestDidReplay`` has run, before the next one is prepared.
    func replayInOrder(_ claims: any ReplayClaims, summary: inout ReplaySummary) async throws {
        var next = try await claims.next()
        var handedOutAt = options.clock.now
        while case .claimed(let entry) = next, !mustStop {
            // Taken while the entry before it was in flight, with at least half a lease left: if that
            // took more than a quarter of a lease, ask again rather than send on a lease that may
            // run out meanwhile.
            if options.clock.now.timeIntervalSince(handedOutAt) > options.leaseDuration.timeInterval / 4 {
                try await claims.release(entry, failure: nil, nextAttemptAt: nil)
                next = try await claims.next()
                handedOutAt = options.clock.now
                continue
            }
            let askedAt = options.clock.now
            async let following = claims.next()
            let outcome: ReplayOutcome
            do {
                outcome = try await replay(entry, claims: claims)
            } catch {
                // The entry the next claim handed out goes back with the others at `finish()`.
                _ = try? await following
                throw error
            }
            next = try await following
            handedOutAt = askedAt
            summary.count(outcome)
            if case .stop(let error) = outcome { throw error }
        }
        if case .busy(let owner, let until) = next, !mustStop {
            throw busyError(owner: owner, until: until)
        }
        if case .claimed = next, Task.isShuttingDownGracefully { summary.stoppedByShutdown = true }
    }
}
