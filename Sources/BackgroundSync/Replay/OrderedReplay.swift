import Foundation

extension ReplayRunner {
    /// How old a check of an entry leased ahead may be for a replay to take it without asking the
    /// store (``ReplayClaims/nextLeasedAhead(checkedWithin:)``). A deletion or set-aside made this
    /// long before a worker takes the entry stops its send; one made later may not (in order, where
    /// the next entry is taken before the current one is sent, this long plus the current send),
    /// just as one made during a send cannot stop it. A server that takes longer than this to answer
    /// has each entry checked during the send before it; a faster one (loopback, a LAN) has a check
    /// every few dozen entries at most, each a read of the store that competes with the sends.
    static let leaseCheckAge: Duration = .milliseconds(20)

    /// One entry at a time, in queue order, stopping at the first that must be retried. The next
    /// entry is taken before the current one is sent when the claims have it ready, and otherwise
    /// asked for while the current one is in flight, so that the store's work (leasing ahead,
    /// deleting deliveries, checking) overlaps the send; the current entry is resolved, and
    /// ``QueueOptions/requestDidReplay`` has run, before the next one is prepared.
    func replayInOrder(
        _ claims: any ReplayClaims, preparer: (any PreparingReplayClaims)?, summary: inout ReplaySummary
    ) async throws {
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
            let outcome: ReplayOutcome
            if let ready = claims.nextLeasedAhead(checkedWithin: Self.leaseCheckAge) {
                // Handed out now, and back at `finish()` if the replay stops before sending it.
                outcome = try await replay(entry, claims: claims, prepared: preparer?.preparedRequest(for: entry))
                next = .claimed(ready)
            } else {
                async let following = claims.next()
                do {
                    outcome = try await replay(entry, claims: claims, prepared: preparer?.preparedRequest(for: entry))
                } catch {
                    // The entry the next claim handed out goes back with the others at `finish()`.
                    _ = try? await following
                    throw error
                }
                next = try await following
            }
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
