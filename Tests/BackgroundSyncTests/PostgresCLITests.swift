import BackgroundSync
import Foundation
import PostgresTestServer
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `bgsync --db postgres://…` against the tests' own PostgreSQL server, each test in a schema of
/// its own.
@Suite(
    "bgsync on PostgreSQL", .timeLimit(.minutes(3)),
    .enabled(if: PostgresTestServer.unavailableReason == nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresCLITests {
    /// A URL to a new schema of the shared server.
    private func storeURL() async throws -> String {
        let server = try await offCooperativePool { try PostgresTestServer.shared() }
        return server.url + "?sslmode=disable&schema=\(uniqueSchema("cli"))"
    }

    @Test func commandsWorkOnAPostgresStore() async throws {
        let url = try await storeURL()
        let server = try RecordingServer()
        let enqueued = try await bgsync(["enqueue", "--db", url, "--queue", "orders", "-X", "POST", "-d", "one", "\(server.url)"])
        #expect(enqueued.status == 0, "\(enqueued.stderr)")
        // $BGSYNC_DB names the store as --db does.
        let second = try await bgsync(
            ["enqueue", "--queue", "orders", "-X", "POST", "-d", "two", "\(server.url)"], environment: ["BGSYNC_DB": url])
        #expect(second.status == 0, "\(second.stderr)")
        let queues = try await bgsync(["queues", "--db", url, "--json"])
        #expect(queues.status == 0, "\(queues.stderr)")
        #expect(queues.stdout.contains("\"pending\":2") || queues.stdout.contains("\"pending\" : 2"), "\(queues.stdout)")
        let list = try await bgsync(["list", "--db", url])
        #expect(list.stdout.contains("/api/posts"), "\(list.stdout)")
        let replay = try await bgsync(["replay", "--db", url, "--queue", "orders"])
        #expect(replay.status == 0, "\(replay.stderr)")
        #expect(server.bodies == ["one", "two"])
        let empty = try await bgsync(["list", "--db", url])
        #expect(empty.stdout.contains("no pending entries"), "\(empty.stdout)")
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func theDashboardShowsAndFixesAPostgresStore() async throws {
        // A password in the URL (the tests' server trusts every login, and ignores it).
        let url = try await storeURL().replacingOccurrences(of: "@", with: ":hunter2@")
        for body in ["one", "two"] {
            #expect(try await bgsync(["enqueue", "--db", url, "--queue", "orders", "-d", body, "http://127.0.0.1:9/x"]).status == 0)
        }
        #expect(try await bgsync(["set-aside", "--db", url, "2", "--reason", "by hand"]).status == 0)
        let (dashboard, base, line) = try await startServingBgsync(["dashboard", "--db", url, "--listen", "127.0.0.1:0"])
        defer { if dashboard.isRunning { dashboard.send(SIGKILL) } }
        #expect(!line.contains("hunter2"), "no password in the announcement: \(line)")
        let client = DashboardTests()
        let list = try await client.get(base + "/")
        #expect(list.body.contains("<tr data-queue=\"orders\"><td><a href=\"/queue?name=orders\">orders</a></td><td class=\"num\">1</td>"))
        let metrics = try await client.get(base + "/metrics")
        #expect(metrics.body.contains("background_sync_store_dead_letters{queue=\"orders\"} 1.0"), "\(metrics.body)")
        let token = try #require(list.formToken)
        let requeued = try await client.post(base + "/requeue", ["form": token, "name": "orders", "confirm": "yes"])
        #expect(requeued.headers["Location"].first == "/queue?name=orders&state=dead&notice=requeued-1")
        let queues = try await bgsync(["queues", "--db", url])
        #expect(queues.stdout.contains("orders  2 "), "\(queues.stdout)")
        dashboard.terminate()
        let stopped = try await exited(dashboard, within: 30)
        #expect(stopped, "bgsync still runs 30 s after SIGTERM")
        if stopped { #expect(dashboard.terminationStatus == 0) }
    }

    @Test func badURLsAndUnreachableServersAreOneLineErrors() async throws {
        let server = try await offCooperativePool { try PostgresTestServer.shared() }
        let bad = try await bgsync(["queues", "--db", "postgres://u:secret@127.0.0.1:99999/db"])
        #expect(bad.status == 2, "\(bad.stderr)")
        #expect(bad.stderr.contains("port 99999 is out of range"), "\(bad.stderr)")
        #expect(!bad.stderr.contains("secret"), "\(bad.stderr)")
        // A URL given without --db: ArgumentParser's error echoes it, without the password.
        let stray = try await bgsync(["list", "postgres://u:secret@127.0.0.1/db"])
        #expect(stray.status != 0)
        #expect(stray.stderr.contains("postgres://u:***@127.0.0.1/db"), "\(stray.stderr)")
        #expect(!stray.stderr.contains("secret"), "\(stray.stderr)")
        // Its control characters escaped too.
        let escaped = try await bgsync(["list", "postgres://u:secret@127.0.0.1/db\u{1B}]0;x\u{07}"])
        #expect(!escaped.stderr.contains("secret") && !escaped.stderr.contains("\u{1B}"), "\(escaped.stderr.debugDescription)")
        let schema = try await bgsync(["queues", "--db", server.url + "?schema=Robert'); DROP TABLE x;--"])
        #expect(schema.status == 2, "\(schema.stderr)")
        // A port nobody listens on: refused.
        let refused = try await bgsync(["queues", "--db", "postgres://u:secret@127.0.0.1:1/db?sslmode=disable"])
        #expect(refused.status == 6, "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        #expect(!refused.stderr.contains("secret"), "\(refused.stderr)")
        let missing = try await bgsync(["queues", "--db", "postgres://bgsync@127.0.0.1:\(server.port)/no_such_database?sslmode=disable"])
        #expect(missing.status == 6, "\(missing.stderr)")
        #expect(missing.stderr.contains("no_such_database"), "\(missing.stderr)")
        let role = try await bgsync(["queues", "--db", "postgres://nobody:pw@127.0.0.1:\(server.port)/postgres?sslmode=disable"])
        #expect(role.status == 6, "\(role.stderr)")
        #expect(!role.stderr.contains("pw@"), "\(role.stderr)")
    }

    @Test func aWrongPasswordIsAOneLineErrorWithoutThePassword() async throws {
        let server = try await offCooperativePool { try PostgresTestServer.shared() }
        let role = PostgresTestServer.passwordRole
        let wrong = try await bgsync(
            ["queues", "--db", "postgres://\(role):wrong-secret@127.0.0.1:\(server.port)/postgres?sslmode=disable"])
        #expect(wrong.status == 6, "\(wrong.stderr)")
        #expect(wrong.stderr.split(separator: "\n").count == 1, "\(wrong.stderr)")
        #expect(wrong.stderr.contains("password authentication failed"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains("wrong-secret"), "\(wrong.stderr)")
        // The right one opens the store: the refusal above was the password's.
        let right = try await bgsync([
            "enqueue", "--db",
            "postgres://\(role):\(PostgresTestServer.rolePassword)@127.0.0.1:\(server.port)/postgres?sslmode=disable&schema=\(uniqueSchema("pw"))",
            "--queue", "orders", "-d", "one", "http://127.0.0.1:9/x",
        ])
        #expect(right.status == 0, "\(right.stderr)")
    }
}
