import Foundation

extension ReplayRunner {
    /// Up to `maxInFlight` entries in flight, independent of each other: as many workers, each
    /// taking the next entry as soon as its send is resolved (without asking the store when the
    /// claims have one ready, see ``leaseCheckAge``). Entries in backoff are skipped by the
    /// claims; the first failure that must stop the replay (a retry, a pause) stops every worker
    /// from taking more, and is thrown once the sends in flight are resolved.
    func replayConcurrently(
        _ claims: any ReplayClaims, preparer: (any PreparingReplayClaims)?, maxInFlight: Int,
        summary: inout ReplaySummary
    ) async throws {
        let failure = Locked<BackgroundSyncError?>(nil)
        // A graceful shutdown stopped a worker that had an entry to send.
        let stopped = Locked(false)
        let outcomes = try await withThrowingTaskGroup(of: [ReplayOutcome].self) { group in
            for _ in 0..<maxInFlight {
                group.addTask {
                    var outcomes: [ReplayOutcome] = []
                    while failure.withLock({ $0 == nil }), !mustStop {
                        let entry: QueueStoreEntry
                        if let ready = claims.nextLeasedAhead(checkedWithin: Self.leaseCheckAge) {
                            entry = ready
                        } else {
                            guard case .claimed(let claimed) = try await claims.next() else { break }
                            entry = claimed
                        }
                        // Another worker may have stopped the replay while this one waited for it. (A
                        // give-back that fails leaves the entry to `finish()`.)
                        if failure.withLock({ $0 != nil }) || mustStop {
                            try? await claims.release(entry, failure: nil, nextAttemptAt: nil)
                            if Task.isShuttingDownGracefully { stopped.withLock { $0 = true } }
                            break
                        }
                        let outcome = try await replay(
                            entry, claims: claims, prepared: preparer?.preparedRequest(for: entry))
                        if case .stop(let error) = outcome {
                            failure.withLock { $0 = $0 ?? error }
                        }
                        outcomes.append(outcome)
                    }
                    return outcomes
                }
            }
            var all: [ReplayOutcome] = []
            for try await outcomes in group { all += outcomes }
            return all
        }
        for outcome in outcomes { summary.count(outcome) }
        // Workers also stop at the top of their loop without taking an entry: a shutdown with no
        // failure may have left entries behind (a joiner that is not shutting down replays again).
        summary.stoppedByShutdown = stopped.withLock { $0 } || (Task.isShuttingDownGracefully && failure.withLock { $0 == nil })
        if let failure = failure.withLock({ $0 }) { throw failure }
    }
}
