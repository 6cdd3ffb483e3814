#if canImport(Network)
import Foundation
@preconcurrency import Network

/// Apple platforms' connectivity: `NWPathMonitor`; `online` when the path is satisfied.
public struct PathConnectivityMonitor: ConnectivityMonitor {
    /// Creates a monitor of every interface.
    public init() {}

    public func statusUpdates() -> AsyncStream<ConnectivityStatus> {
        let (stream, continuation) = AsyncStream.makeStream(of: ConnectivityStatus.self)
        let monitor = NWPathMonitor()
        monitor.pathUpdateHandler = { path in
            continuation.yield(path.status == .satisfied ? .online : .offline)
        }
        continuation.onTermination = { _ in monitor.cancel() }
        monitor.start(queue: DispatchQueue(label: "BackgroundSync.PathConnectivityMonitor"))
        return stream
    }
}
#endif
