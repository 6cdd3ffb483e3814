import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Workbox's `NetworkOnly` strategy: sends the request through a transport, with plugins around
/// the fetch (``StrategyPlugin``). With a ``BackgroundSyncPlugin``, a request that fails is queued
/// and ``handle(_:)`` throws ``StrategyFailure`` carrying the entry id.
public struct NetworkOnly: Sendable {
    /// The plugins, in the order their callbacks run.
    public let plugins: [any StrategyPlugin]
    /// The transport fetches go through.
    public let transport: any HTTPTransport

    /// Creates the strategy. A ``BackgroundSyncPlugin`` among `plugins` that no strategy was
    /// given before gets the others' `requestWillFetch`, which its queue then runs at each replay;
    /// it keeps those of that first strategy, so a strategy built again (per request, in a test)
    /// changes nothing for the queue.
    public init(plugins: [any StrategyPlugin] = [], transport: any HTTPTransport = URLSessionTransport()) {
        self.plugins = plugins
        self.transport = transport
        for case let sync as BackgroundSyncPlugin in plugins {
            sync.queue.control.attachRequestPlugins(plugins.filter { !($0 is BackgroundSyncPlugin) })
        }
    }

    /// Fetches `request`: `requestWillFetch` plugins, the transport, then `fetchDidSucceed`
    /// plugins; on failure, `fetchDidFail` plugins and ``StrategyFailure``.
    ///
    /// With a ``BackgroundSyncPlugin``: the idempotency key is added before the attempt; when its
    /// queue is paused, or ordered with entries waiting, the request is queued behind them without
    /// being tried (so it does not overtake them); on failure it is queued first, before the other
    /// plugins' `fetchDidFail` run (one of them throwing cannot lose it). A cancelled attempt is a
    /// failure like any other: the request is queued (the server may have it; its replay carries
    /// the same key).
    ///
    /// - Returns: the server's answer, as the plugins left it (a 4xx included: it is an answer).
    /// - Throws: ``StrategyFailure`` when no usable answer came (with the ids of the entries the
    ///   strategy's ``BackgroundSyncPlugin``s queued); what a `requestWillFetch` plugin threw.
    public func handle(_ request: URLRequest) async throws -> ServerResponse {
        var original = request
        if let stream = original.httpBodyStream {
            // Read once: the attempt and the queue both need the body.
            original.httpBodyStream = nil
            original.httpBody = try StorableRequest.readAll(stream)
        }
        let syncPlugins = plugins.compactMap { $0 as? BackgroundSyncPlugin }
        for sync in syncPlugins { original = sync.preparing(original) }
        for sync in syncPlugins {
            if let reason = try await sync.mustWait() {
                let failure = FetchFailure(originalRequest: original, request: original, error: reason, response: nil)
                throw try await fail(failure, error: reason, response: nil)
            }
        }
        var prepared = original
        for plugin in plugins { prepared = try await plugin.requestWillFetch(prepared) }
        var answer: ServerResponse?
        do {
            var response = try await transport.send(prepared)
            answer = response
            for plugin in plugins { response = try await plugin.fetchDidSucceed(request: prepared, response: response) }
            return response
        } catch {
            let failure = FetchFailure(originalRequest: original, request: prepared, error: error, response: answer)
            throw try await fail(failure, error: error, response: answer)
        }
    }

    /// Runs the failure callbacks, the queueing ones first; returns the error to throw. Once the
    /// request is queued, an error from another plugin's `fetchDidFail` is kept in the failure
    /// (``StrategyFailure/pluginError``) rather than thrown in its place, so the caller still
    /// learns the entry id.
    private func fail(_ failure: FetchFailure, error: any Error, response: ServerResponse?) async throws -> StrategyFailure {
        var queued: [StrategyFailure.QueuedEntry] = []
        for case let sync as BackgroundSyncPlugin in plugins {
            queued.append(.init(queueName: sync.queue.name, entryID: try await sync.queueFailed(failure)))
        }
        var pluginError: (any Error)?
        for plugin in plugins where !(plugin is BackgroundSyncPlugin) {
            do {
                try await plugin.fetchDidFail(failure)
            } catch {
                if queued.isEmpty { throw error }
                pluginError = pluginError ?? error
            }
        }
        return StrategyFailure(underlying: error, response: response, queued: queued, pluginError: pluginError)
    }
}

/// Thrown by ``NetworkOnly/handle(_:)`` when no usable answer came.
public struct StrategyFailure: Error, Sendable, CustomStringConvertible {
    /// A request a ``BackgroundSyncPlugin`` queued.
    public struct QueuedEntry: Sendable, Hashable {
        /// The queue.
        public var queueName: String
        /// The stored entry's id.
        public var entryID: Int64
    }

    /// The transport's error, or what a `fetchDidSucceed` plugin threw.
    public var underlying: any Error
    /// The server's answer when a plugin rejected it; `nil` when none came.
    public var response: ServerResponse?
    /// The entries the strategy's ``BackgroundSyncPlugin``s stored; empty when none did.
    public var queued: [QueuedEntry]
    /// What another plugin's `fetchDidFail` threw after the request was queued, if anything.
    public var pluginError: (any Error)?

    /// Whether the request was stored for a later replay.
    public var isQueued: Bool { !queued.isEmpty }

    public var description: String {
        let cause = describeError(underlying)
        guard let first = queued.first else { return "fetch failed: \(cause)" }
        return "fetch failed (\(cause)); queued as entry \(first.entryID) in '\(first.queueName)'"
    }
}
