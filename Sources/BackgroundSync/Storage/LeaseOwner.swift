import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Who holds a replay lease: a host name, a process id and a random token.
///
/// The host and process id let a restarted process take over at once the leases of a process of
/// the same host that died (killed, crashed), instead of waiting for the leases to expire. A lease
/// from another host, or from a process that still exists, is only taken over after it expires.
public struct LeaseOwner: Sendable, Hashable, CustomStringConvertible {
    /// The host name.
    public let host: String
    /// The process id.
    public let processID: Int32
    /// A random token that tells replayers of one process apart.
    public let token: String

    /// A new owner for this process.
    public static func current() -> LeaseOwner {
        LeaseOwner(host: thisHost, processID: thisProcess, token: UUID().lowercasedString)
    }

    /// This host's name and this process's id, read once: a claim checks the lease of every row it
    /// passes, and `ProcessInfo.hostName` asks the system each time.
    private static let thisHost = ProcessInfo.processInfo.hostName
    private static let thisProcess = ProcessInfo.processInfo.processIdentifier
    /// The start of the string form of this process's owners.
    private static let thisProcessPrefix = "\(thisHost)|\(thisProcess)|"

    /// Creates an owner.
    public init(host: String, processID: Int32, token: String) {
        self.host = host
        self.processID = processID
        self.token = token
    }

    /// Parses the string form written to the database.
    public init?(rawValue: String) {
        let parts = rawValue.split(separator: "|", omittingEmptySubsequences: false)
        guard parts.count == 3, let pid = Int32(parts[1]) else { return nil }
        self.init(host: String(parts[0]), processID: pid, token: String(parts[2]))
    }

    /// The string form written to the database: `host|pid|token`.
    public var rawValue: String { "\(host)|\(processID)|\(token)" }

    public var description: String { rawValue }

    /// Whether a lease written as `rawValue` (a ``rawValue``) belongs to a process of this host
    /// that no longer exists: a driver takes such a lease over at once instead of waiting for it to
    /// expire. `false` for a lease of another host, of a live process, or that cannot be parsed.
    public static func isAbandoned(_ rawValue: String) -> Bool {
        // This process's own leases (the ones a concurrent claim passes most, those in flight) are
        // told apart without parsing.
        if rawValue.hasPrefix(thisProcessPrefix) { return false }
        guard let owner = LeaseOwner(rawValue: rawValue), owner.host == thisHost, owner.processID > 0 else {
            return false
        }
        #if os(Linux) || os(macOS) || os(Android) || os(FreeBSD)
        return kill(owner.processID, 0) == -1 && errno == ESRCH
        #else
        return false
        #endif
    }
}
