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
    ///   ``SendResult/queued(entryID:reason:)``.
    /// - Any other answer, a refusal included, is ``SendResult/sent(_:)``: nothing is stored.
    /// - An ordered queue (``QueueOptions/maxConcurrentReplays`` 1) that holds pending entries, or
    ///   a paused queue, stores the request without trying it, so that it does not overtake them.
    ///
    /// - Throws: ``BackgroundSyncError/Code/invalidRequest`` for a request that cannot be stored
    ///   (checked before anything is sent); a storage error when it had to be queued and could not
    ///   be; `CancellationError` when the calling task was cancelled during the attempt (then
    ///   nothing is stored, and the server may or may not have received the request).
    public nonisolated func send(_ request: URLRequest, metadata: [String: String]? = nil) async throws -> SendResult {
        try await send(request, metadata: metadata, attempt: transport.send)
    }

    /// ``send(_:metadata:)`` with the live attempt made by `attempt` instead of the queue's
    /// transport: for a client that has its own (an OpenAPI client's middleware chain, a session
    /// with the app's delegate). `attempt` gets the request with its idempotency key added and
    /// returns the server's answer, or throws when none came. Replays use the queue's transport.
    public nonisolated func send(
        _ request: URLRequest, metadata: [String: String]? = nil,
        attempt: @Sendable (URLRequest) async throws -> ServerResponse
    ) async throws -> SendResult {
        let request = capture.addingIdempotencyKey(to: request)
        let stored = try capture.capture(QueueEntry(request: request, timestamp: options.clock.now, metadata: metadata))
        if control.pausedStatus != nil {
            return .queued(entryID: try await add(captured: stored, at: .tail), reason: .paused)
        }
        if options.maxConcurrentReplays <= 1, try await store.size() > 0 {
            return .queued(entryID: try await add(captured: stored, at: .tail), reason: .behindPendingEntries)
        }
        let reason: SendResult.QueuedReason
        do {
            let response = try await attempt(request)
            switch options.classifier(response) {
            case .delivered, .deadLetter:
                return .sent(response)
            case .retry, .pauseForAuthentication:
                reason = .status(response)
            }
        } catch {
            if Task.isCancelled || error is CancellationError { throw CancellationError() }
            reason = .noResponse(describeError(error))
        }
        return .queued(entryID: try await add(captured: stored, at: .tail), reason: reason)
    }
}
