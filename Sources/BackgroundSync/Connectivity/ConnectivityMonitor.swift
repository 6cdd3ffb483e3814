import Foundation

/// Whether the device can reach the network.
public enum ConnectivityStatus: Sendable, Hashable {
    /// A route to the network exists (or the probed server answers).
    case online
    /// No route (or the probed server does not answer).
    case offline
}

/// Reports connectivity changes to a ``SyncService``, which replays queues when the device comes
/// back online.
public protocol ConnectivityMonitor: Sendable {
    /// A stream that yields the current status first, then each change. Ending the iteration stops
    /// the monitoring.
    func statusUpdates() -> AsyncStream<ConnectivityStatus>
}

/// The monitors of the platform.
public enum ConnectivityMonitors {
    /// The platform's own monitor: netlink on Linux, `NWPathMonitor` on Apple platforms; `nil`
    /// where there is none (the service then assumes it is online).
    public static func system() -> (any ConnectivityMonitor)? {
        #if os(Linux)
        return NetlinkConnectivityMonitor()
        #elseif canImport(Network)
        return PathConnectivityMonitor()
        #else
        return nil
        #endif
    }
}
