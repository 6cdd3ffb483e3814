import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

extension Queue {
    /// Sends `request` now through the queue's transport and queues it when it cannot be delivered
    /// now: what a Workbox `BackgroundSyncPlugin` does for a route, as one call.
    ///
    /// ```swift
    /// switch try await queue.send(request) {
    /// case .sent(let response) where response.status < 300: showSent()
    /// case .sent(let response): showRefused(response)          // a 4xx: the caller's to handle
    /// case .queued: showSavedWillSync()                         // stored, replayed later
    /// }
    /// ```
    ///
    /// - The idempotency key (``QueueOptions/idempotencyKeyHeader``) is added to a POST or PATCH
    ///   *before* the first attempt, so that a first attempt that timed out after the server acted
    ///   and every replay carry one key.
    /// - No response, or an answer ``QueueOptions/classifier`` retries or pauses on (5xx, 408,
    ///   425, 429, 401/403 by default): the request is stored as ``pushRequest(_:metadata:)``
    ///   stores it (secret header fields protected) with a sync registered, and the result is
    ///   ``SendResult/queued(entryID:reason:)``. The failed attempt is recorded with the entry (one
    ///   attempt, its failure, the retry policy's backoff and `Retry-After`), so a sync does not
    ///   send it again at once.
    /// - Any other answer, a refusal included, is ``SendResult/sent(_:)``: nothing is stored.
    /// - An ordered queue (``QueueOptions/maxConcurrentReplays`` 1) that holds pending entries, or
    ///   a paused queue, stores the request without trying it, so that it does not overtake them.
    /// - Cancelled during the attempt, the request is stored all the same (the server may have
    ///   received it; its replay carries the same key), and the result says
    ///   ``SendResult/QueuedReason/interrupted``; delete the entry if the write is no longer wanted.
    ///   No attempt is counted for it, as for a replay that is cancelled.
    ///
    /// - Throws: ``BackgroundSyncError/Code/invalidRequest`` for a request that cannot be stored
    ///   (checked before anything is sent); `CancellationError` when the task was cancelled before
    ///   the attempt (nothing sent, nothing stored); a storage error when it had to be queued and
    ///   could not be.
    public nonisolated func send(_ request: URLRequest, metadata: [String: String]? = nil) async throws -> SendResult {
        try await send(request, metadata: metadata, attempt: transport.send)
    }

    /// ``send(_:metadata:)`` with the live attempt made by `attempt` instead of the queue's
    /// transport: for a client that has its own (an OpenAPI client's middleware chain, a session
    /// with the app's delegate). `attempt` gets the request with its idempotency key added (and a
    /// body stream read into `httpBody`) and returns the server's answer, or throws when none came.
    /// Replays use the queue's transport.
    public nonisolated func send(
        _ request: URLRequest, metadata: [String: String]? = nil,
        attempt: @Sendable (URLRequest) async throws -> ServerResponse
    ) async throws -> SendResult {
        var request = capture.addingIdempotencyKey(to: request)
        var stored = try capture.capture(QueueEntry(request: request, timestamp: options.clock.now, metadata: metadata))
        if request.httpBodyStream != nil {
            // The capture read the stream to its end: send what it read.
            request.httpBodyStream = nil
            request.httpBody = stored.requestData.body
        }
        if control.pausedStatus != nil {
            return .queued(entryID: try await add(captured: stored, at: .tail), reason: .paused)
        }
        if options.maxConcurrentReplays <= 1, try await store.size() > 0 {
            return .queued(entryID: try await add(captured: stored, at: .tail), reason: .behindPendingEntries)
        }
        // Nothing is sent for a task cancelled before the attempt.
        try Task.checkCancellation()
        let reason: SendResult.QueuedReason
        do {
            let response = try await attempt(request)
            switch options.classifier(response) {
            case .delivered, .deadLetter:
                return .sent(response)
            case .retry, .pauseForAuthentication:
                reason = .status(response)
                recordFailedAttempt(&stored, response: response, error: nil)
            }
        } catch {
            if Task.isCancelled || error is CancellationError {
                // Interrupted, not failed: no attempt counted, as when a replay is cancelled.
                reason = .interrupted
            } else {
                reason = .noResponse(describeError(error))
                recordFailedAttempt(&stored, response: nil, error: error)
            }
        }
        return .queued(entryID: try await add(captured: stored, at: .tail), reason: reason)
    }

    /// Records a failed live attempt on an entry about to be stored: one attempt, its failure, and
    /// the retry policy's backoff (at least `Retry-After`), so that a sync does not send it again at
    /// once.
    nonisolated func recordFailedAttempt(
        _ stored: inout UnidentifiedQueueStoreEntry, response: ServerResponse?, error: (any Error)?
    ) {
        stored.lastFailure = response?.failure
            ?? ReplayFailure(kind: .noResponse, message: error.map(describeError) ?? "no response")
        let retryAfter = response?.retryAfter(now: options.clock.now)
        let delay = runner.random.withLock {
            options.retryPolicy.delay(afterAttempts: 1, retryAfter: retryAfter, using: &$0)
        }
        stored.attempts = 1
        stored.nextAttemptAt = options.clock.now.addingTimeInterval(delay.timeInterval)
    }
}
