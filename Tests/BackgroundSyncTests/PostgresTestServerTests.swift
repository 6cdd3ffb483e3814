import ChildProcesses
import Foundation
import PostgresTestServer
import Testing

/// The PostgreSQL server the PostgreSQL tests start for themselves.
@Suite(
    "A PostgreSQL server of the tests' own", .timeLimit(.minutes(2)),
    .enabled(
        if: PostgresTestServer.unavailableReason == nil,
        Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresTestServerTests {
    /// `psql` as the server's superuser over TCP; its output, or `nil` if it could not connect.
    private func query(_ server: PostgresTestServer, _ sql: String) async throws -> String? {
        try await offCooperativePool {
            let run = try ChildProcess.run(
                "/usr/bin/psql",
                ["-h", "127.0.0.1", "-p", "\(server.port)", "-U", server.user, "-d", "postgres", "-tAc", sql],
                environment: ["PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"])
            return run.status == 0 ? String(decoding: run.stdout, as: UTF8.self) : nil
        }
    }

    @Test func itStartsAnswersStopsAndStartsAgain() async throws {
        let server = try await offCooperativePool { try PostgresTestServer() }
        #expect(server.url == "postgres://bgsync@127.0.0.1:\(server.port)/postgres")
        #expect(try await query(server, "SELECT 1") == "1\n")
        #expect(try await query(server, "SHOW listen_addresses") == "127.0.0.1\n")
        try await offCooperativePool { server.stop() }
        #expect(try await query(server, "SELECT 1") == nil)
        try await offCooperativePool { try server.start() }
        #expect(try await query(server, "SELECT 2") == "2\n")
    }
}
