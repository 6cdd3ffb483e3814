import BackgroundSync
import Foundation

/// A monitor driven by hand: the seam for tests, and for apps that learn about connectivity in
/// their own way. Each ``statusUpdates()`` stream starts with the current status.
public final class ManualConnectivityMonitor: ConnectivityMonitor {
    private struct State {
        var status: ConnectivityStatus
        var continuations: [UUID: AsyncStream<ConnectivityStatus>.Continuation] = [:]
    }

    private let state: Locked<State>

    /// Creates a monitor showing `status`.
    public init(_ status: ConnectivityStatus = .online) {
        state = Locked(State(status: status))
    }

    /// The current status.
    public var status: ConnectivityStatus { state.withLock { $0.status } }

    /// Changes the status; streams see only real changes.
    public func set(_ status: ConnectivityStatus) {
        let listeners = state.withLock { state -> [AsyncStream<ConnectivityStatus>.Continuation] in
            guard state.status != status else { return [] }
            state.status = status
            return Array(state.continuations.values)
        }
        listeners.forEach { $0.yield(status) }
    }

    public func statusUpdates() -> AsyncStream<ConnectivityStatus> {
        let (stream, continuation) = AsyncStream.makeStream(of: ConnectivityStatus.self)
        let id = UUID()
        state.withLock { state in
            state.continuations[id] = continuation
            continuation.yield(state.status)
        }
        continuation.onTermination = { [state] _ in
            _ = state.withLock { $0.continuations.removeValue(forKey: id) }
        }
        return stream
    }
}
