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

    /// Creates the strategy. Each ``BackgroundSyncPlugin`` among `plugins` is given the others'
    /// `requestWillFetch`, which its queue then runs at each replay.
    public init(plugins: [any StrategyPlugin] = [], transport: any HTTPTransport = URLSessionTransport()) {
        self.plugins = plugins
        self.transport = transport
        for case let sync as BackgroundSyncPlugin in plugins {
            sync.queue.control.requestPlugins = plugins.filter { !($0 is BackgroundSyncPlugin) }
        }
    }

    /// Fetches `request`: `requestWillFetch` plugins, the transport, then `fetchDidSucceed`
    /// plugins; on failure, `fetchDidFail` plugins and ``StrategyFailure``.
    ///
    /// - Returns: the server's answer, as the plugins left it (a 4xx included: it is an answer).
    /// - Throws: ``StrategyFailure`` when no usable answer came (with the ids of the entries the
    ///   strategy's ``BackgroundSyncPlugin``s queued); what a `requestWillFetch` plugin threw;
    ///   `CancellationError` when the task was cancelled (nothing is queued then).
    public func handle(_ request: URLRequest) async throws -> ServerResponse {
        var original = request
        for case let sync as BackgroundSyncPlugin in plugins { original = sync.preparing(original) }
        var prepared = original
        for plugin in plugins { prepared = try await plugin.requestWillFetch(prepared) }
        var answer: ServerResponse?
        do {
            var response = try await transport.send(prepared)
            answer = response
            for plugin in plugins { response = try await plugin.fetchDidSucceed(request: prepared, response: response) }
            return response
        } catch {
            if Task.isCancelled || error is CancellationError { throw CancellationError() }
            let failure = FetchFailure(originalRequest: original, request: prepared, error: error, response: answer)
            var queued: [StrategyFailure.QueuedEntry] = []
            for plugin in plugins {
                if let sync = plugin as? BackgroundSyncPlugin {
                    queued.append(.init(queueName: sync.queue.name, entryID: try await sync.queueFailed(failure)))
                } else {
                    try await plugin.fetchDidFail(failure)
                }
            }
            throw StrategyFailure(underlying: error, response: answer, queued: queued)
        }
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

    /// Whether the request was stored for a later replay.
    public var isQueued: Bool { !queued.isEmpty }

    public var description: String {
        let cause = describeError(underlying)
        guard let first = queued.first else { return "fetch failed: \(cause)" }
        return "fetch failed (\(cause)); queued as entry \(first.entryID) in '\(first.queueName)'"
    }
}
