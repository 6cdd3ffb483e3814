import ChildProcesses
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A real PostgreSQL server of its own for a test or a benchmark: `initdb` into a new temporary
/// folder, `postgres` on a free loopback port (and a Unix socket in that folder), stopped and
/// removed when the value goes away. Uses the binaries of Debian's `postgresql` package (or any
/// `pg_ctl` found by `pg_config --bindir`). Run as root, the server runs as the `postgres` user
/// (PostgreSQL refuses root); otherwise as the current user.
public final class PostgresTestServer: Sendable {
    /// The TCP port on 127.0.0.1.
    public let port: Int
    /// The folder holding the cluster, its log and its socket.
    public let directory: URL
    /// The superuser, who connects without a password (trust authentication, loopback only).
    public let user = "bgsync"
    private let binaries: URL
    private let runAs: String?
    private let durable: Bool

    /// A `postgres://` URL to the `postgres` database.
    public var url: String { "postgres://\(user)@127.0.0.1:\(port)/postgres" }
    /// A role that must give its password (SCRAM), ``rolePassword``, for tests of a password refused;
    /// it may create schemas in the `postgres` database.
    public static let passwordRole = "bgsync_password"
    /// The password of ``passwordRole``.
    public static let rolePassword = "right-password"

    /// Why a server cannot be started here (no PostgreSQL binaries), or `nil`.
    public static var unavailableReason: String? {
        binaryDirectory() == nil
            ? "PostgreSQL is not installed (no initdb and pg_ctl: install Debian's postgresql package)" : nil
    }

    /// Creates and starts a cluster; throws with PostgreSQL's own output when it cannot. `durable`
    /// keeps PostgreSQL's `fsync` (for a benchmark of durable writes); tests run without it.
    public init(durable: Bool = false) throws {
        self.durable = durable
        guard let binaries = Self.binaryDirectory() else {
            throw Failure(message: Self.unavailableReason ?? "PostgreSQL is not installed")
        }
        self.binaries = binaries
        directory = URL(fileURLWithPath: "/tmp").appendingPathComponent("bgsync-postgres-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        runAs = geteuid() == 0 ? "postgres" : nil
        if runAs != nil {
            _ = try Self.run("/bin/chown", ["postgres:", directory.path])
        }
        port = try Self.freePort()
        let data = directory.appendingPathComponent("data").path
        try command("initdb", ["-D", data, "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        try requirePassword(data: data)
        try start()
        // SCRAM, as `pg_hba.conf` asks: PostgreSQL 12 and 13 would store an md5 hash by default.
        try command("psql", [
            "-X", "-h", directory.path, "-p", "\(port)", "-U", user, "-d", "postgres", "-c",
            """
            SET password_encryption = 'scram-sha-256'; CREATE ROLE \(Self.passwordRole) LOGIN PASSWORD '\(Self.rolePassword)';
            GRANT CREATE ON DATABASE postgres TO \(Self.passwordRole)
            """,
        ])
    }

    /// Makes ``passwordRole`` log in with its password over TCP: the first matching line of
    /// `pg_hba.conf` wins, so the line goes before `initdb`'s (which trust every login). The file
    /// is rewritten in place, keeping its owner.
    private func requirePassword(data: String) throws {
        let path = data + "/pg_hba.conf"
        guard let rules = FileManager.default.contents(atPath: path), let handle = FileHandle(forWritingAtPath: path) else {
            throw Failure(message: "cannot read and write \(path)")
        }
        defer { try? handle.close() }
        try handle.truncate(atOffset: 0)
        try handle.write(contentsOf: Data("host all \(Self.passwordRole) 127.0.0.1/32 scram-sha-256\n".utf8) + rules)
    }

    /// One server for the whole test process, started on first use and stopped (and removed) when
    /// the process exits; each test works in a schema or database of its own on it.
    public static func shared() throws -> PostgresTestServer {
        try sharedLock.withLock {
            if let sharedServer { return try sharedServer.get() }
            let result = Result { try PostgresTestServer() }
            sharedServer = result
            if case .success = result {
                atexit {
                    guard case .success(let server)? = PostgresTestServer.sharedServer else { return }
                    server.stop()
                    try? FileManager.default.removeItem(at: server.directory)
                }
            }
            return try result.get()
        }
    }

    private static let sharedLock = NSLock()
    // Safe: read and written under `sharedLock` (and at exit).
    nonisolated(unsafe) private static var sharedServer: Result<PostgresTestServer, any Error>?

    deinit {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }

    /// Stops the server (fast shutdown: sessions are ended). Calling it again does nothing.
    public func stop() {
        _ = try? command("pg_ctl", ["-D", directory.appendingPathComponent("data").path, "-m", "fast", "-w", "stop"])
    }

    /// Starts the server again after ``stop()``, on the same port.
    public func start() throws {
        let data = directory.appendingPathComponent("data").path
        try command("pg_ctl", [
            "-D", data, "-l", directory.appendingPathComponent("server.log").path, "-w", "-t", "60", "-o",
            "-p \(port) -k \(directory.path) -c listen_addresses=127.0.0.1 -c fsync=\(durable ? "on" : "off") -c max_connections=500",
            "start",
        ])
    }

    /// An error of the server's tools, with their output.
    public struct Failure: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    @discardableResult
    private func command(_ tool: String, _ arguments: [String]) throws -> String {
        let path = binaries.appendingPathComponent(tool).path
        if let runAs {
            return try Self.run("/usr/bin/setpriv", [
                "--reuid=\(runAs)", "--regid=\(runAs)", "--init-groups", "--reset-env", path,
            ] + arguments)
        }
        return try Self.run(path, arguments)
    }

    /// Runs a tool and waits for it, its output (stdout and stderr) in a file, not a pipe: the
    /// server `pg_ctl start` leaves running would hold a pipe open. Reaped directly (`waitpid`):
    /// the daemon `pg_ctl` forks must not keep the wait going, and gets none of this process's
    /// other descriptors (a test's files, sockets, the pipes of a child another test starts).
    private static func run(_ tool: String, _ arguments: [String]) throws -> String {
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-pg-\(UUID().uuidString).out").path
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        guard FileManager.default.createFile(atPath: outputPath, contents: nil, attributes: [.posixPermissions: 0o600]),
              let output = FileHandle(forWritingAtPath: outputPath) else {
            throw Failure(message: "cannot create \(outputPath) for the output of \(tool)")
        }
        let child: ChildProcess
        do {
            defer { try? output.close() }
            child = try ChildProcess(tool, arguments, standardOutput: .handle(output), standardError: .standardOutput)
        } catch {
            throw Failure(message: "\(error)")
        }
        child.waitUntilExit()
        let text = String(decoding: FileManager.default.contents(atPath: outputPath) ?? Data(), as: UTF8.self)
        guard child.terminationReason == .exit, child.terminationStatus == 0 else {
            throw Failure(message: "\(URL(fileURLWithPath: tool).lastPathComponent) \(arguments.joined(separator: " ")) failed: \(text)")
        }
        return text
    }

    /// The folder of `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/<version>/bin`, else
    /// `pg_config --bindir`.
    static func binaryDirectory() -> URL? {
        let root = URL(fileURLWithPath: "/usr/lib/postgresql")
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? [])
            .compactMap(Int.init).sorted(by: >)
        let candidates = versions.map { root.appendingPathComponent("\($0)/bin") }
            + [(try? run("/usr/bin/pg_config", ["--bindir"])).map { URL(fileURLWithPath: $0.trimmingCharacters(in: .whitespacesAndNewlines)) }].compactMap { $0 }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0.appendingPathComponent("pg_ctl").path)
            && FileManager.default.isExecutableFile(atPath: $0.appendingPathComponent("initdb").path) }
    }

    /// A TCP port nobody listens on now (bound to port 0, then released).
    private static func freePort() throws -> Int {
        let socketDescriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socketDescriptor >= 0 else { throw Failure(message: "cannot make a socket to find a free port") }
        defer { close(socketDescriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic -> Bool in
                bind(socketDescriptor, generic, length) == 0 && getsockname(socketDescriptor, generic, &length) == 0
            }
        }
        guard bound else { throw Failure(message: "cannot bind a socket to find a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
