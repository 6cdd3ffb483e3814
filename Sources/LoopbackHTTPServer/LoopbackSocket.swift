import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Binds a new TCP socket to 127.0.0.1:`port` (0: a free port the system picks), listening or
/// not; returns the descriptor and the port bound. Closes the socket when it fails.
func bindLoopbackSocket(port: UInt16, reuseAddress: Bool, listening: Bool) throws -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, LoopbackHTTPServer.streamType, 0)
    guard fd >= 0 else { throw LoopbackHTTPServer.posixError("socket") }
    if reuseAddress {
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0, !listening || listen(fd, 128) == 0 else {
        let error = LoopbackHTTPServer.posixError("bind 127.0.0.1:\(port)")
        _ = closeSocket(fd)
        throw error
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, UInt16(bigEndian: address.sin_port))
}

/// A loopback port where nothing listens, held so that no server takes it: connections to it are
/// refused. Released when the value goes.
public final class ClosedPort: @unchecked Sendable {
    // `@unchecked Sendable`: the descriptor is written once in `init` and closed in `deinit`.
    private let fd: Int32
    /// The port.
    public let port: UInt16

    /// Binds a socket to a free loopback port without listening on it (and without
    /// `SO_REUSEADDR`, so that no other socket can bind it meanwhile).
    public init() throws {
        (fd, port) = try bindLoopbackSocket(port: 0, reuseAddress: false, listening: false)
    }

    /// `http://127.0.0.1:<port>`.
    public var baseURL: URL { URL(string: "http://127.0.0.1:\(port)")! }

    deinit { _ = closeSocket(fd) }
}

/// A loopback port that takes connections and never answers: the system completes each
/// connection, nobody reads from it or writes to it. Released when the value goes.
public final class SilentPort: @unchecked Sendable {
    // `@unchecked Sendable`: the descriptor is written once in `init` and closed in `deinit`.
    private let fd: Int32
    /// The port.
    public let port: UInt16

    /// Listens on a free loopback port, and never accepts.
    public init() throws {
        (fd, port) = try bindLoopbackSocket(port: 0, reuseAddress: false, listening: true)
    }

    deinit { _ = closeSocket(fd) }
}
