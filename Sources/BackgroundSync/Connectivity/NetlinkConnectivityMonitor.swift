#if os(Linux)
import Foundation
import Glibc

/// Linux connectivity from the kernel: a `NETLINK_ROUTE` socket subscribed to link, address and
/// route changes; after each change the monitor checks whether a default route (IPv4 or IPv6)
/// exists, and reports `online` when one does.
///
/// A default route means packets can leave the host; it does not prove that a server answers.
/// Combine it with ``ProbeConnectivityMonitor`` when that matters.
public struct NetlinkConnectivityMonitor: ConnectivityMonitor {
    /// Where the routing tables are read (the `/proc/net` of the monitor's network namespace).
    let procNet: String

    /// Creates a monitor of the current network namespace.
    public init() {
        procNet = "/proc/net"
    }

    init(procNet: String) {
        self.procNet = procNet
    }

    public func statusUpdates() -> AsyncStream<ConnectivityStatus> {
        let (stream, continuation) = AsyncStream.makeStream(of: ConnectivityStatus.self)
        let stopped = Locked(false)
        let procNet = self.procNet
        let thread = Thread {
            Self.listen(procNet: procNet, continuation: continuation, stopped: stopped)
        }
        thread.name = "NetlinkConnectivityMonitor"
        continuation.onTermination = { _ in stopped.withLock { $0 = true } }
        thread.start()
        return stream
    }

    /// Opens the netlink socket, yields the current status, then waits for kernel notifications
    /// until the stream ends. Without a usable socket it reports the status once and stays silent.
    private static func listen(
        procNet: String, continuation: AsyncStream<ConnectivityStatus>.Continuation, stopped: Locked<Bool>
    ) {
        let fd = openSocket()
        defer { if fd >= 0 { close(fd) } }
        var last = hasDefaultRoute(procNet: procNet) ? ConnectivityStatus.online : .offline
        continuation.yield(last)
        guard fd >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while !stopped.withLock({ $0 }) {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, 250)
            if ready < 0 && errno != EINTR { return }
            if ready <= 0 { continue }
            // Drain every pending notification, then look at the routing table once.
            while recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT)) > 0 {}
            let status = hasDefaultRoute(procNet: procNet) ? ConnectivityStatus.online : .offline
            if status != last {
                last = status
                continuation.yield(status)
            }
        }
        continuation.finish()
    }

    /// A `NETLINK_ROUTE` socket bound to the link, address and route multicast groups, or -1.
    static func openSocket() -> Int32 {
        let netlinkRoute: Int32 = 0  // NETLINK_ROUTE, <linux/netlink.h>
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkRoute)
        guard fd >= 0 else { return -1 }
        // struct sockaddr_nl { sa_family_t nl_family; unsigned short nl_pad; __u32 nl_pid; __u32 nl_groups; }
        // (not exported by Glibc's module map), written field by field in host byte order.
        // Groups: RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE.
        let groups: UInt32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400
        var address = [UInt8](repeating: 0, count: 12)
        withUnsafeBytes(of: UInt16(AF_NETLINK)) { address.replaceSubrange(0..<2, with: $0) }
        withUnsafeBytes(of: groups) { address.replaceSubrange(8..<12, with: $0) }
        let bound = address.withUnsafeBytes { raw in
            bind(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
        }
        if bound != 0 {
            close(fd)
            return -1
        }
        return fd
    }

    /// Whether `/proc/net/route` or `/proc/net/ipv6_route` has a usable default route.
    static func hasDefaultRoute(procNet: String) -> Bool {
        hasIPv4DefaultRoute(String(contentsOfFileOrEmpty: procNet + "/route"))
            || hasIPv6DefaultRoute(String(contentsOfFileOrEmpty: procNet + "/ipv6_route"))
    }

    /// `/proc/net/route`: `Iface Destination Gateway Flags ... Mask ...`, hexadecimal.
    static func hasIPv4DefaultRoute(_ table: String) -> Bool {
        for line in table.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 8, let flags = UInt32(fields[3], radix: 16) else { continue }
            if fields[1] == "00000000", fields[7] == "00000000", flags & 0x1 != 0, flags & 0x200 == 0 {
                return true
            }
        }
        return false
    }

    /// `/proc/net/ipv6_route`: `dest plen src plen nexthop metric refcnt use flags iface`.
    static func hasIPv6DefaultRoute(_ table: String) -> Bool {
        for line in table.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 10, let flags = UInt32(fields[8], radix: 16) else { continue }
            if fields[0].allSatisfy({ $0 == "0" }), fields[1] == "00", flags & 0x1 != 0, flags & 0x200 == 0,
                fields[9] != "lo"
            {
                return true
            }
        }
        return false
    }
}

extension String {
    fileprivate init(contentsOfFileOrEmpty path: String) {
        self = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }
}
#endif
