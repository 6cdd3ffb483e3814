import BackgroundSync
@testable import BackgroundSyncPostgres
import ChildProcesses
import Foundation
import PostgresTestServer
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The connection that holds an instance's session lock (its claims) and listens for pushes.
@Suite(
    "PostgreSQL session", .timeLimit(.minutes(2)),
    .enabled(if: PostgresTestServer.unavailableReason == nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresSessionTests {
    /// A session whose server stops answering without closing the connection (its backend stopped
    /// with SIGSTOP, as silent as a flow a NAT dropped) is replaced once a check goes unanswered,
    /// and the instance leases again.
    @Test func aSessionThatStopsAnsweringIsReplaced() async throws {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: postgres.url + "?sslmode=disable")
        configuration.schema = uniqueSchema("session")
        configuration.sessionCheckInterval = .seconds(1)
        let stores = RunningStores()
        let database = try await stores.open(configuration)
        func waitForKey(otherThan old: Int64?) async throws -> Int64? {
            for _ in 0..<2_000 {
                if let key = database.sessionKey, key != old { return key }
                try await Task.sleep(for: .milliseconds(10))
            }
            return nil
        }
        guard let first = try await waitForKey(otherThan: nil) else {
            Issue.record("no session")
            await stores.stopAll()
            return
        }
        let found = try await offCooperativePool {
            try Self.psql(postgres, """
                SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
                AND ((classid::bigint << 32) | objid::bigint) = \(first)
                """)
        }
        guard let pid = Int32(found) else {
            Issue.record("no backend holds the session lock: '\(found)'")
            await stores.stopAll()
            return
        }
        kill(pid, SIGSTOP)
        // Whatever happens next, the shared server's backend runs again.
        defer { kill(pid, SIGCONT) }
        let second = try await waitForKey(otherThan: first)
        #expect(second != nil, "a new session within 20 seconds")

        let entry = UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/x", method: "POST"))
        _ = try await database.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
        let claims = database.claims(
            queueName: "q", order: .ordered, owner: .current(), leaseDuration: .seconds(60), clock: SystemWallClock())
        let result = try await claims.next()
        if case .claimed = result {} else { Issue.record("leased under the new session: \(result)") }
        try await claims.finish()
        await stores.stopAll()
    }

    /// A pooled connection whose server stops answering while the store idles (its backend stopped
    /// with SIGSTOP) is closed by the store's own check, so that the next statement gets a live
    /// connection instead of waiting on it.
    @Test func aPooledConnectionThatStopsAnsweringIsReplaced() async throws {
        let postgres = try await offCooperativePool { try PostgresTestServer.shared() }
        var configuration = try PostgresQueueDatabase.Configuration(url: postgres.url + "?sslmode=disable")
        configuration.schema = uniqueSchema("poolcheck")
        configuration.sessionCheckInterval = .seconds(1)
        // The pool keeps its first connection open (the others close once unused for the
        // interval), lends it first, and the store checks it: the one used here, one at a time.
        configuration.maximumConnections = 2
        let stores = RunningStores()
        let database = try await stores.open(configuration)
        let entry = UnidentifiedQueueStoreEntry(requestData: .init(url: "https://a.example/x", method: "POST"))
        let backend = { @Sendable in
            try await database.read("read") { connection in
                (connection.id, try await database.rows(connection, "SELECT pg_backend_pid()").first?.decode(Int32.self))
            }
        }
        // Connections other than the kept one close once unused for the interval: then a push
        // (a fresh success, so no check for a second) and the backend's lease get the kept one.
        // On a slow machine (the thread sanitizer) the pool's own check can take the kept
        // connection just then, so that the push opens a second: the setup is tried again.
        var kept: (id: Int, pid: Int32)?
        var pushed = 0
        for _ in 0..<10 where kept == nil {
            for _ in 0..<1_000 where database.poolUse.withLock({ $0.open.count }) > 1 {
                try await Task.sleep(for: .milliseconds(10))
            }
            _ = try await database.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
            pushed += 1
            let (id, pid) = try await backend()
            if let pid, database.poolUse.withLock({ $0.open }) == [id] { kept = (id, pid) }
        }
        guard let (stoppedID, pid) = kept else {
            Issue.record("the pool never kept its one connection alone: open \(database.poolUse.withLock { $0.open })")
            await stores.stopAll()
            return
        }
        kill(pid, SIGSTOP)
        // Whatever happens next, the shared server's backend runs again.
        defer { kill(pid, SIGCONT) }
        var closed = false
        for _ in 0..<2_000 where !closed {
            closed = !database.poolUse.withLock { $0.open.contains(stoppedID) }
            if !closed { try await Task.sleep(for: .milliseconds(10)) }
        }
        kill(pid, SIGCONT)
        #expect(closed, "the stopped connection closed within 20 seconds")
        if closed {
            _ = try await database.pushEntry(entry, queueName: "q", at: .tail, registeringSyncTag: nil)
            let (id, newPID) = try await backend()
            #expect(id != stoppedID && newPID != pid)
            #expect(try await database.countEntries(queueName: "q", state: .pending) == pushed + 1)
        }
        await stores.stopAll()
    }

    /// One value from `psql`, as text.
    static func psql(_ server: PostgresTestServer, _ sql: String) throws -> String {
        let run = try ChildProcess.run(
            "/usr/bin/env",
            ["psql", "-h", "127.0.0.1", "-p", "\(server.port)", "-U", server.user, "-d", "postgres", "-At", "-c", sql])
        return String(decoding: run.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
