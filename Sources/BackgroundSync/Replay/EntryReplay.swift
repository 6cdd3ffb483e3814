import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

extension ReplayRunner {
    /// Sends one claimed entry, classifies the answer and records the outcome on `claims`
    /// (`prepared`: its stored request, built already by the claims, if they did):
    /// expired → deleted; cannot be rebuilt → dead letter; a `requestWillFetch` plugin or the
    /// `requestWillReplay` hook threw, or no response came → retry; a response → what ``QueueOptions/classifier`` decides. A delivery is
    /// reported (event, metrics, ``QueueOptions/requestDidReplay``) before this returns. Throws only
    /// when the store fails; the entry then goes back at ``ReplayClaims/finish()`` or when its
    /// lease expires. Nothing is lost either way.
    func replay(
        _ entry: QueueStoreEntry, claims: any ReplayClaims, prepared: StorableRequest? = nil,
        credentialsRefreshed: Bool = false
    ) async throws -> ReplayOutcome {
        if isExpired(entry) {
            try await claims.complete(entry)
            await reporter.expired(entry)
            return .expired
        }
        // Described only when something went wrong: this runs for every replayed entry.
        var target: String {
            if let record = entry.recordKey { return "record \(record) (entry \(entry.id))" }
            return "entry \(entry.id) (\(entry.requestData.method) \(MaskedRequest.url(entry.requestData.url)))"
        }
        var outgoing: Outgoing
        do {
            if sendsStoredRequestsAsTheyAre && entry.sealedSecrets == nil {
                outgoing = .stored(try prepared ?? StorableRequest(requestData: entry.requestData))
            } else {
                outgoing = .built(try capture.rebuild(entry))
            }
        } catch {
            let failure = ReplayFailure(kind: .invalidRequest, message: "cannot rebuild the request: \(error)")
            return try await deadLetter(entry, failure, claims: claims)
        }
        if case .built(var request) = outgoing {
            let plugins = control.requestPlugins
            var stage = "a requestWillFetch plugin"
            do {
                for plugin in plugins { request = try await plugin.requestWillFetch(request) }
                stage = "requestWillReplay"
                if let hook = options.requestWillReplay { request = try await hook(request, entry) }
            } catch {
                if Task.isCancelled { return try await giveBack(entry, claims: claims) }
                let failure = ReplayFailure(kind: .hookFailed, message: "\(stage) failed: " + describeError(error))
                return try await retry(
                    entry, failure, retryAfter: nil, message: "\(stage) failed for \(target)",
                    underlying: error, claims: claims)
            }
            outgoing = .built(request)
        }
        let response: ServerResponse
        do {
            switch outgoing {
            case .stored(let stored): response = try await transport.send(stored)
            case .built(let request): response = try await transport.send(request)
            }
        } catch {
            // A send the replay's cancellation interrupted is no failed attempt.
            if Task.isCancelled { return try await giveBack(entry, claims: claims) }
            return try await retry(
                entry, ReplayFailure(kind: .noResponse, message: describeError(error)), retryAfter: nil,
                message: "replay of \(target) got no response", underlying: error, claims: claims)
        }
        var failure: ReplayFailure { response.failure }  // built only when the entry is not delivered
        switch options.classifier(response) {
        case .delivered:
            try await claims.complete(entry)
            await reporter.delivered(entry, response)
            await options.requestDidReplay?(entry, response)
            return .delivered(response)
        case .deadLetter:
            return try await deadLetter(entry, failure, claims: claims)
        case .retry:
            let retryAfter = response.retryAfter(now: options.clock.now)
            return try await retry(
                entry, failure, retryAfter: retryAfter, message: "replay of \(target) got HTTP \(response.status)",
                underlying: nil, claims: claims)
        case .pauseForAuthentication:
            if !credentialsRefreshed, let hook = options.onAuthenticationRequired, await hook(entry, response) {
                return try await replay(entry, claims: claims, prepared: prepared, credentialsRefreshed: true)
            }
            try await claims.release(entry, failure: failure, nextAttemptAt: nil)
            control.pause(status: response.status)
            await reporter.paused(entry, status: response.status)
            var error = pausedError(status: response.status)
            error.entryID = entry.id
            return .stop(error)
        }
    }

    func isExpired(_ entry: QueueStoreEntry) -> Bool {
        options.clock.now.timeIntervalSince(entry.timestamp) > options.maxRetentionTime.timeInterval
    }

    /// The error a paused queue's replay throws.
    func pausedError(status: Int) -> BackgroundSyncError {
        BackgroundSyncError(
            .queuePaused, "replay is paused: the server answered \(status) and wants credentials",
            queueName: queueName, status: status)
    }

    private func giveBack(_ entry: QueueStoreEntry, claims: any ReplayClaims) async throws -> ReplayOutcome {
        try await claims.release(entry, failure: nil, nextAttemptAt: nil)
        return .givenBack
    }

    /// Gives the entry back for a later attempt after the retry policy's backoff (or dead-letters
    /// it when it is out of attempts); the replay stops.
    private func retry(
        _ entry: QueueStoreEntry, _ failure: ReplayFailure, retryAfter: Duration?, message: String,
        underlying: (any Error)?, claims: any ReplayClaims
    ) async throws -> ReplayOutcome {
        let attempts = entry.attempts + 1
        guard options.retryPolicy.allowsAnotherAttempt(afterAttempts: attempts) else {
            var final = failure
            final.message = "gave up after \(attempts) attempts: \(failure.message)"
            return try await deadLetter(entry, final, claims: claims)
        }
        let delay = random.withLock {
            options.retryPolicy.delay(afterAttempts: attempts, retryAfter: retryAfter, using: &$0)
        }
        try await claims.release(
            entry, failure: failure, nextAttemptAt: options.clock.now.addingTimeInterval(delay.timeInterval))
        await reporter.retryScheduled(entry, failure: failure, attempts: attempts, delay: delay)
        return .stop(
            BackgroundSyncError(
                .queueReplayFailed, "\(message); it stays queued (attempt \(attempts), next in \(delay))",
                queueName: queueName, entryID: entry.id, status: failure.status, underlying: underlying))
    }

    private func deadLetter(
        _ entry: QueueStoreEntry, _ failure: ReplayFailure, claims: any ReplayClaims
    ) async throws -> ReplayOutcome {
        try await claims.deadLetter(entry, failure: failure)
        await reporter.deadLettered(entry.id, failure: failure)
        if let hook = options.onDeadLetter {
            var dead = entry
            dead.state = .dead
            dead.attempts += 1
            dead.lastFailure = failure
            dead.nextAttemptAt = nil
            await hook(dead)
        }
        return .deadLettered
    }
}

/// What a replay sends: the stored request as it is, or a `URLRequest` rebuilt for what changes
/// it (plugins, the `requestWillReplay` hook, sealed secret header fields).
private enum Outgoing {
    case stored(StorableRequest)
    case built(URLRequest)
}
