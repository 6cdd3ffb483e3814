import Foundation
import ServiceLifecycle

extension Queue {
    /// Registers the queue's sync tag. Never throws: a registration that cannot be written is
    /// logged (the entries themselves are already stored, and the next sync replays them).
    public nonisolated func registerSync() async {
        do {
            try await syncManager.register(syncTag)
        } catch {
            reporter.logger.info("sync registration failed", metadata: ["error": "\(error)"])
        }
    }

    /// Runs the sync that ``QueueOptions/forceSyncFallback`` asks for, once per queue: Workbox runs
    /// it when the queue is constructed; here it runs in the task that calls this, or in the start
    /// of the ``SyncService`` that runs the queue, whichever comes first, so that cancelling that
    /// task stops it. Does nothing without `forceSyncFallback`, or once it ran.
    public func runFallbackSync() async {
        guard options.forceSyncFallback, !fallbackSyncDone else { return }
        fallbackSyncDone = true
        do {
            try await handleSync(SyncEvent(tag: syncTag))
        } catch {
            reporter.logger.info("start-up sync failed; entries stay queued", metadata: ["error": "\(error)"])
        }
    }

    /// Runs the ``QueueOptions/forceSyncFallback`` sync if it has not run yet; see ``runFallbackSync()``.
    @available(*, deprecated, renamed: "runFallbackSync()")
    public func waitForFallbackSync() async {
        await runFallbackSync()
    }

    /// Runs `onSync` for an event of the queue's tag, then registers again if entries were added
    /// meanwhile and the sync succeeded, or failed on its last chance (Workbox's rules).
    func handleSync(_ event: SyncEvent) async throws {
        syncState.withLock { $0 = (inProgress: true, requestsAdded: false) }
        // Ends the sync and tells whether entries were added during it, atomically: a push after
        // this point registers the tag itself.
        let finish = { [syncState] () -> Bool in
            syncState.withLock { state in
                state.inProgress = false
                return state.requestsAdded
            }
        }
        do {
            if let onSync = options.onSync {
                try await onSync(self)
            } else {
                try await replayRequests()
            }
            // A graceful shutdown cut the sync short: what is left keeps the registration, so that
            // the next run (of this process or another) syncs it.
            if Task.isShuttingDownGracefully, (try? await size()) ?? 0 > 0 {
                await registerSync()
            }
            // A concurrent replay skips entries in backoff and succeeds: they keep a registration,
            // so that a service's timer syncs them when the head's backoff ends.
            if let next = try? await headEntry()?.nextAttemptAt, next > options.clock.now {
                await registerSync()
            }
        } catch {
            if finish() && event.lastChance {
                await registerSync()
            }
            throw error
        }
        if finish() {
            await registerSync()
        }
    }

    // MARK: - Pause

    /// Whether replay is paused because the server asked for credentials (401/403).
    public var isPaused: Bool { control.pausedStatus != nil }

    /// Resumes a queue paused by a 401/403 (once the app has fresh credentials, which
    /// ``QueueOptions/requestWillReplay`` adds) and registers a sync.
    public func resume() async {
        guard control.resume() else { return }
        await reporter.resumed()
        await registerSync()
    }

    // MARK: - Replay

    /// Sends the queue's entries in order and deletes each one once the server accepted it.
    ///
    /// For each entry, from the head: the entry is leased (so no other replayer sends it too), passed
    /// to ``QueueOptions/requestWillReplay``, sent, then classified by ``QueueOptions/classifier``:
    /// - delivered (default: 1xx–3xx): deleted, ``QueueOptions/requestDidReplay`` gets the response;
    /// - dead letter (default: 4xx but 401/403/408/425/429, 501, 505): set aside with the status and
    ///   a body excerpt, and replay goes on;
    /// - retry (no response, 408, 425, 429, 5xx, or the `requestWillReplay` hook threw): the entry
    ///   stays at the head with one more attempt counted, its failure recorded, and its next attempt
    ///   due after ``QueueOptions/retryPolicy``'s backoff (at least the server's `Retry-After`);
    ///   replay stops and ``BackgroundSyncError/Code/queueReplayFailed`` is thrown with the cause.
    ///   An entry out of attempts (``RetryPolicy/maxAttempts``) becomes a dead letter instead, and
    ///   replay goes on;
    /// - credentials needed (401, 403): ``QueueOptions/onAuthenticationRequired`` may provide them
    ///   and the entry is sent again; otherwise the queue pauses and
    ///   ``BackgroundSyncError/Code/queuePaused`` is thrown.
    ///
    /// A manual replay sends the head even if it is in backoff. Expired entries are deleted and
    /// reported instead of sent. With ``QueueOptions/maxConcurrentReplays`` above 1, up to that many
    /// entries are in flight, entries in backoff are skipped, and a failure stops new sends.
    ///
    /// The replay runs in the calling task. A call made while a replay of this queue runs waits for
    /// that replay and returns its summary. Cancelling the task stops the replay after the sends in
    /// flight (a send the cancellation interrupted counts no attempt), gives back every entry it
    /// leased, and throws `CancellationError`: nothing is lost. In a service group that shuts down
    /// gracefully (swift-service-lifecycle), the replay lets the sends in flight finish, takes
    /// nothing more, and returns.
    @discardableResult
    public func replayRequests() async throws -> ReplaySummary {
        while true {
            if let status = control.pausedStatus {
                throw runner.pausedError(status: status)
            }
            guard let running = runningReplay else { break }
            let result = await running.wait()
            // The replay this call joined was cancelled, or stopped by a shutdown, and this call was
            // not: run one of its own.
            switch result {
            case .failure(let error) where error is CancellationError && !Task.isCancelled:
                continue
            case .success(let summary) where summary.stoppedByShutdown && !Task.isShuttingDownGracefully:
                continue
            default:
                return try result.get()
            }
        }
        let join = ReplayJoin()
        runningReplay = join
        let result: Result<ReplaySummary, any Error>
        do {
            result = .success(try await runner.run())
        } catch {
            result = .failure(error)
        }
        runningReplay = nil
        join.resolve(result)
        return try result.get()
    }
}

/// A running replay that other callers of ``Queue/replayRequests()`` wait for.
final class ReplayJoin: Sendable {
    private struct State {
        var result: Result<ReplaySummary, any Error>?
        var waiters: [UUID: CheckedContinuation<Result<ReplaySummary, any Error>, Never>] = [:]
    }

    private let state = Locked(State())

    /// The replay's result; `CancellationError` when the waiting task is cancelled first, and an
    /// empty summary stopped by shutdown when the waiting task's service group shuts down first.
    func wait() async -> Result<ReplaySummary, any Error> {
        let id = UUID()
        var stopped = ReplaySummary()
        stopped.stoppedByShutdown = true
        let early = stopped
        return await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withCheckedContinuation { continuation in
                    let ready = state.withLock { state -> Result<ReplaySummary, any Error>? in
                        if let result = state.result { return result }
                        if Task.isCancelled { return .failure(CancellationError()) }
                        if Task.isShuttingDownGracefully { return .success(early) }
                        state.waiters[id] = continuation
                        return nil
                    }
                    if let ready { continuation.resume(returning: ready) }
                }
            } onCancel: {
                self.stopWaiting(id, with: .failure(CancellationError()))
            }
        } onGracefulShutdown: {
            self.stopWaiting(id, with: .success(early))
        }
    }

    private func stopWaiting(_ id: UUID, with result: Result<ReplaySummary, any Error>) {
        let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
        waiter?.resume(returning: result)
    }

    func resolve(_ result: Result<ReplaySummary, any Error>) {
        let waiters = state.withLock { state in
            state.result = result
            defer { state.waiters = [:] }
            return state.waiters.values
        }
        waiters.forEach { $0.resume(returning: result) }
    }
}
