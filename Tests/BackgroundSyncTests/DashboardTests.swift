import AsyncHTTPClient
import BackgroundSync
import BackgroundSyncDashboard
import ChildProcesses
import Foundation
import Logging
import LoopbackHTTPServer
import NIOCore
import NIOHTTP1
import Prometheus
import Testing

/// The dashboard served for real (Hummingbird on a loopback port) on a real SQLite file, asked
/// through AsyncHTTPClient with redirects not followed.
@Suite("Dashboard")
struct DashboardTests {
    /// An answer as the tests read it.
    struct Page {
        var status: Int
        var headers: HTTPHeaders
        var body: String

        /// The value of the hidden form token on the page.
        var formToken: String? {
            guard let range = body.range(of: "name=\"form\" value=\"") else { return nil }
            return String(body[range.upperBound...].prefix { $0 != "\"" })
        }
    }

    static let client = HTTPClient(
        eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(redirectConfiguration: .disallow))

    /// Runs the dashboard on a free port for the duration of `body`.
    @available(macOS 14, iOS 17, tvOS 17, *)
    func withDashboard(
        _ database: any QueueDatabase, token: String? = nil, pageSize: Int = 50, pages: Bool = true,
        metrics: PrometheusCollectorRegistry? = nil, _ body: @Sendable (_ base: String) async throws -> Void
    ) async throws {
        try await serveDashboard(
            database,
            .init(
                host: "127.0.0.1", port: 0, token: token, storeDescription: "test store", pageSize: pageSize, pages: pages,
                metrics: metrics),
            body)
    }

    func get(_ url: String, headers: [(String, String)] = []) async throws -> Page {
        var request = HTTPClientRequest(url: url)
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        return try await send(request)
    }

    func post(_ url: String, _ fields: [String: String], headers: [(String, String)] = []) async throws -> Page {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        let body = fields.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")" }
            .joined(separator: "&")
        request.body = .bytes(ByteBuffer(string: body))
        return try await send(request)
    }

    func send(_ request: HTTPClientRequest) async throws -> Page {
        let response = try await Self.client.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 8 << 20)
        return Page(status: Int(response.status.code), headers: response.headers, body: String(buffer: body))
    }

    func push(_ database: any QueueDatabase, _ queue: String, url: String = "https://api.example.com/posts", body: String = "{}",
        headers: [String: String] = [:]) async throws -> Int64
    {
        try await pushPOST(database, queue, url: url, body: body, headers: headers)
    }

    // MARK: Pages

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func theQueueListShowsEachQueueWithItsSizesAndAHealthCheck() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        for _ in 0..<3 { _ = try await push(database, "posts") }
        let dead = try await push(database, "posts")
        try await database.setAsideEntries(
            queueName: "posts", ids: [dead], failure: ReplayFailure(kind: .httpStatus, status: 422, message: "refused"))
        _ = try await push(database, "metrics")
        try await withDashboard(database) { base in
            let page = try await get(base + "/")
            #expect(page.status == 200)
            #expect(page.headers["Content-Security-Policy"].first?.contains("script-src 'self'") == true)
            #expect(page.body.contains("<tr data-queue=\"posts\"><td><a href=\"/queue?name=posts\">posts</a></td><td class=\"num\">3</td>"))
            #expect(page.body.contains("<a href=\"/queue?name=posts&amp;state=dead\">1</a>"), "the dead letters link to their list")
            #expect(page.body.contains("<tr data-queue=\"metrics\">"))
            let live = try await get(base + "/", headers: [("X-Dashboard-Live", "1")])
            #expect(live.body.hasPrefix("<h2>Queues</h2>"), "the live refresh gets the main region only")
            let health = try await get(base + "/healthz")
            #expect(health.status == 200 && health.body == "ok\n")
            let missing = try await get(base + "/queue?name=nope")
            #expect(missing.status == 404 && missing.body.contains("no queue named &#39;nope&#39;"))
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func aLargeQueueIsReadPageByPageInQueueOrder() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        var ids: [Int64] = []
        for index in 0..<23 { ids.append(try await push(database, "big", body: "\(index)")) }
        let expected = ids
        try await withDashboard(database, pageSize: 10) { base in
            var seen: [Int64] = []
            var next: String? = "/queue?name=big"
            var pages = 0
            while let path = next {
                let page = try await get(base + path)
                #expect(page.status == 200)
                seen += page.body.components(separatedBy: "<tr data-entry=\"").dropFirst().compactMap { Int64($0.prefix { $0.isNumber }) }
                next = page.body.range(of: "rel=\"next\" href=\"").map { range in
                    String(page.body[range.upperBound...].prefix { $0 != "\"" }).replacingOccurrences(of: "&amp;", with: "&")
                }
                pages += 1
                if pages > 5 { break }
            }
            #expect(pages == 3)
            #expect(seen == expected, "every entry once, in queue order, across the pages")
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func anEntryShowsItsRequestWithSecretsMaskedAndItsLastFailure() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let id = try await push(
            database, "posts", url: "https://user:hunter2@api.example.com/posts", body: "{\"title\":\"hello\"}",
            headers: ["Authorization": "Bearer sekret", "Content-Type": "application/json"])
        try await database.setAsideEntries(
            queueName: "posts", ids: [id],
            failure: ReplayFailure(kind: .httpStatus, status: 422, message: "HTTP 422", responseExcerpt: Data("title missing".utf8)))
        let binary = try await database.pushEntry(
            UnidentifiedQueueStoreEntry(requestData: .init(url: "https://api.example.com/blob", method: "PUT", body: Data([0, 1, 2, 255]))),
            queueName: "posts", at: .tail, registeringSyncTag: nil
        ).id
        // Byte 65,536, where the preview stops, is the second byte of an "é".
        let longText = try await push(database, "posts", body: "a" + String(repeating: "é", count: 40_000))
        try await withDashboard(database) { base in
            let page = try await get(base + "/entry?id=\(id)")
            #expect(page.status == 200)
            #expect(!page.body.contains("sekret") && !page.body.contains("hunter2"), "no secret reaches the page")
            #expect(page.body.contains("https://user:(masked)@api.example.com/posts"))
            #expect(page.body.contains("<th>Authorization</th><td class=\"url\">(masked)</td>"))
            #expect(page.body.contains("{&quot;title&quot;:&quot;hello&quot;}"))
            #expect(page.body.contains("HTTP 422") && page.body.contains("title missing"))
            let long = try await get(base + "/entry?id=\(longText)")
            #expect(long.body.contains("éééé") && long.body.contains("more bytes"), "a long UTF-8 body cut mid-character is still text")
            let hex = try await get(base + "/entry?id=\(binary)")
            #expect(hex.body.contains("00 01 02 ff"), "a binary body shows as hex")
            let gone = try await get(base + "/entry?id=999999")
            #expect(gone.status == 404)
        }
    }

    // MARK: Actions

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func requeueingADeadLetterAsksFirstThenMovesItBack() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let id = try await push(database, "posts")
        try await database.setAsideEntries(
            queueName: "posts", ids: [id], failure: ReplayFailure(kind: .httpStatus, status: 500, message: "HTTP 500"))
        try await database.unregisterSyncTag("background-sync:posts")
        try await withDashboard(database) { base in
            let list = try await get(base + "/queue?name=posts&state=dead")
            let token = try #require(list.formToken)
            let ask = try await post(base + "/requeue", ["form": token, "name": "posts", "id": "\(id)"])
            #expect(ask.status == 200 && ask.body.contains("Requeue dead letter \(id) of &#39;posts&#39;?"))
            #expect(try await database.entry(id: id)?.state == .dead, "asking changes nothing")
            let done = try await post(base + "/requeue", ["form": token, "name": "posts", "id": "\(id)", "confirm": "yes"])
            #expect(done.status == 303)
            #expect(done.headers["Location"].first == "/queue?name=posts&state=dead&notice=requeued-1")
            #expect(try await database.entry(id: id)?.state == .pending)
            #expect(try await database.syncTags() == ["background-sync:posts"], "the queue's sync is registered again")
            let after = try await get(base + (done.headers["Location"].first ?? "/"))
            #expect(after.body.contains("Requeued 1 dead letter."))
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func deletingAndPurgingAreConfirmedPosts() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let keep = try await push(database, "posts")
        let doomed = try await push(database, "posts")
        let dead = [try await push(database, "posts"), try await push(database, "posts")]
        try await database.setAsideEntries(queueName: "posts", ids: dead, failure: ReplayFailure(kind: .setAside, message: "by hand"))
        try await withDashboard(database) { base in
            let token = try #require(try await get(base + "/").formToken)
            let get = try await self.get(base + "/delete?id=\(doomed)")
            #expect(get.status != 200 && get.status != 303, "an action is never a GET")
            #expect(try await post(base + "/delete", ["form": token, "id": "\(doomed)"]).body.contains("Delete entry \(doomed)"))
            #expect(try await post(base + "/delete", ["form": token, "id": "\(doomed)", "confirm": "yes"]).status == 303)
            #expect(try await database.entry(id: doomed) == nil)
            #expect(try await post(base + "/purge", ["form": token, "name": "posts"]).body.contains("Delete the 2 dead letters"))
            let purged = try await post(base + "/purge", ["form": token, "name": "posts", "confirm": "yes"])
            #expect(purged.headers["Location"].first?.hasSuffix("notice=purged-2") == true)
            #expect(try await database.countEntries(queueName: "posts", state: .dead) == 0)
            #expect(try await database.entry(id: keep) != nil, "the pending entry stays")
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func syncNowSendsTheQueueFromTheDashboard() async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        // The first is 30 days old: past the library's default retention, and still sent.
        _ = try await database.pushEntry(
            UnidentifiedQueueStoreEntry(
                requestData: .init(url: server.url.absoluteString, method: "POST", body: Data("0".utf8)),
                timestamp: Date().addingTimeInterval(-30 * 86_400)),
            queueName: "posts", at: .tail, registeringSyncTag: nil)
        for index in 1..<3 { _ = try await push(database, "posts", url: server.url.absoluteString, body: "\(index)") }
        try await withDashboard(database) { base in
            let token = try #require(try await get(base + "/").formToken)
            let started = try await post(base + "/sync", ["form": token, "name": "posts", "confirm": "yes"])
            #expect(started.headers["Location"].first == "/queue?name=posts&notice=sync-started")
            // Waits for the sync, which runs in the dashboard's task: the page reports its end.
            let deadline = ContinuousClock.now + .seconds(30)
            var page = try await get(base + "/queue?name=posts")
            while !page.body.contains("succeeded"), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
                page = try await get(base + "/queue?name=posts")
            }
            #expect(page.body.contains("last sync from this page succeeded") && page.body.contains("0 left"))
            #expect(server.bodies == ["0", "1", "2"], "sent in queue order")
            #expect(try await database.countEntries(queueName: "posts", state: .pending) == 0)
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func aFailedSyncSaysWhyWithoutTheStoredPassword() async throws {
        let server = try RecordingServer()
        server.respond { _, _ in .respond(.text("down", status: 503)) }
        let database = try SQLiteQueueDatabase.temporary()
        var components = URLComponents(url: server.url, resolvingAgainstBaseURL: false)!
        components.user = "user"
        components.password = "hunter2"
        _ = try await push(database, "posts", url: components.string!)
        try await withDashboard(database) { base in
            let token = try #require(try await get(base + "/").formToken)
            #expect(try await post(base + "/sync", ["form": token, "name": "nope", "confirm": "yes"]).status == 404,
                "no sync of a queue the store does not have")
            _ = try await post(base + "/sync", ["form": token, "name": "posts", "confirm": "yes"])
            let deadline = ContinuousClock.now + .seconds(30)
            var page = try await get(base + "/")
            while !page.body.contains("failed"), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
                page = try await get(base + "/")
            }
            #expect(page.body.contains("last sync from this page failed") && page.body.contains("HTTP 503"), "\(page.body)")
            #expect(!page.body.contains("hunter2"))
            #expect(page.body.contains("user:(masked)@"))
        }
    }

    // MARK: Metrics

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func metricsServeTheStoresFiguresAndTheLibrarysCounters() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let registry = PrometheusCollectorRegistry()
        let queue = try Queue(
            name: "posts", options: QueueOptions(metricsFactory: PrometheusMetricsFactory(registry: registry)), database: database)
        for _ in 0..<2 { try await queue.pushRequest(postRequest(URL(string: "https://api.example.com/posts")!, body: "x")) }
        let dead = try await push(database, "quote\"d\nname")
        try await database.setAsideEntries(
            queueName: "quote\"d\nname", ids: [dead], failure: ReplayFailure(kind: .setAside, message: "by hand"))
        try await withDashboard(database, pages: false, metrics: registry) { base in
            let metrics = try await get(base + "/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.headers["Content-Type"].first?.hasPrefix("text/plain; version=0.0.4") == true)
            let lines = Set(metrics.body.split(separator: "\n").map(String.init))
            #expect(lines.contains("background_sync_enqueued_total{queue=\"posts\"} 2"), "the library's counter, per queue")
            #expect(lines.contains("background_sync_store_pending{queue=\"posts\"} 2.0"))
            #expect(lines.contains("background_sync_store_dead_letters{queue=\"quote\\\"d\\nname\"} 1.0"), "label values escaped")
            #expect(lines.contains("background_sync_store_up 1.0"))
            #expect(lines.contains { $0.hasPrefix("background_sync_store_oldest_age_seconds{queue=\"posts\"} ") })
            // Only /metrics and /healthz without pages.
            #expect(try await get(base + "/").status == 404)
            #expect(try await get(base + "/healthz").status == 200)
            // A queue emptied and gone from the store leaves the figures.
            try await database.deleteEntries(queueName: nil, state: nil)
            let after = try await get(base + "/metrics")
            #expect(after.body.contains("background_sync_store_pending{queue=\"posts\"} 0.0"))
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func bgsyncRunServesMetricsAndHealthWhileItReplays() async throws {
        let server = try RecordingServer()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("dashboard-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let db = folder.appendingPathComponent("q.sqlite").path
        #expect(try await bgsync(["enqueue", server.url.absoluteString, "-d", "a", "--queue", "q", "--db", db]).status == 0)
        let (daemon, base, line) = try await startServingBgsync(
            ["run", "--db", db, "--no-connectivity-monitor", "--poll-interval", "0.1", "--listen", "127.0.0.1:0"])
        defer { if daemon.isRunning { daemon.send(SIGKILL) } }
        #expect(line.hasPrefix("bgsync run: /metrics and /healthz: http://127.0.0.1:"), "\(line)")
        #expect(try await get(base + "/healthz").body == "ok\n")
        // The daemon delivers the entry; its own counter says so.
        let deadline = ContinuousClock.now + .seconds(30)
        var metrics = try await get(base + "/metrics").body
        while !metrics.contains("background_sync_replayed_total{queue=\"q\"} 1"), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            metrics = try await get(base + "/metrics").body
        }
        #expect(metrics.contains("background_sync_replayed_total{queue=\"q\"} 1"), "\(metrics)")
        #expect(metrics.contains("background_sync_store_pending{queue=\"q\"} 0.0"))
        #expect(server.bodies == ["a"])
        #expect(try await get(base + "/").status == 404, "no pages on a daemon's port")
        daemon.terminate()
        let stopped = try await exited(daemon, within: 30)
        #expect(stopped, "bgsync still runs 30 s after SIGTERM")
        if stopped { #expect(daemon.terminationStatus == 0) }
    }

    // MARK: Safety

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func aHostileStoredRequestShowsAsText() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let hostile = "<script>alert(1)</script>"
        let id = try await push(
            database, hostile, body: "<img src=x onerror=alert(1)>\"'&", headers: ["X-Note": "<svg onload=alert(1)>"])
        _ = try await push(database, "joined\"\u{200D} autofocus data-x=\"")
        _ = try await push(database, "marked\"\u{301} data-y=\"")
        try await database.setAsideEntries(
            queueName: hostile, ids: [id],
            failure: ReplayFailure(kind: .httpStatus, status: 400, message: "<b>bad</b>", responseExcerpt: Data("<script>x()</script>".utf8)))
        try await withDashboard(database) { base in
            for path in ["/", "/queue?name=\(hostile.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)&state=dead", "/entry?id=\(id)"] {
                let page = try await get(base + path)
                #expect(page.status == 200, "\(path)")
                for raw in ["<script>alert", "<img src=x", "<svg", "<b>bad", "<script>x()"] {
                    #expect(!page.body.contains(raw), "\(path) holds \(raw) unescaped")
                }
            }
            let entry = try await get(base + "/entry?id=\(id)")
            #expect(entry.body.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"))
            // A quote followed by a combining mark or a joiner is still a quote to HTML.
            let list = try await get(base + "/")
            #expect(!list.body.contains("\"\u{200D}") && !list.body.contains("\"\u{301}"))
            #expect(list.body.contains("data-queue=\"joined&quot;\u{200D} autofocus data-x=&quot;\""))
            #expect(entry.body.contains("&lt;svg onload=alert(1)&gt;"))
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func actionsNeedTheFormTokenAndTheDashboardsOwnPages() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let id = try await push(database, "posts")
        try await withDashboard(database) { base in
            let token = try #require(try await get(base + "/").formToken)
            let forged = try await post(base + "/delete", ["form": "0000", "id": "\(id)", "confirm": "yes"])
            #expect(forged.status == 403)
            let missing = try await post(base + "/delete", ["id": "\(id)", "confirm": "yes"])
            #expect(missing.status == 403)
            let crossSite = try await post(
                base + "/delete", ["form": token, "id": "\(id)", "confirm": "yes"], headers: [("Sec-Fetch-Site", "cross-site")])
            #expect(crossSite.status == 403)
            let otherOrigin = try await post(
                base + "/delete", ["form": token, "id": "\(id)", "confirm": "yes"], headers: [("Origin", "http://evil.example")])
            #expect(otherOrigin.status == 403)
            #expect(try await database.entry(id: id) != nil, "no refused action changed anything")
            // A page of another site reaching 127.0.0.1 through a rebound DNS name names its own host.
            for host in ["evil.example", "127.0.0.1.evil.example", "localhost.evil.example:80", "[::2]:8080"] {
                let rebound = try await get(base + "/", headers: [("Host", host)])
                #expect(rebound.status == 403, "\(host)")
            }
            for host in ["LOCALHOST:8080", "127.1.2.3", "[::1]:8080"] {
                #expect(try await get(base + "/", headers: [("Host", host)]).status == 200, "\(host)")
            }
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func withATokenEveryRequestButTheHealthCheckCarriesIt() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        _ = try await push(database, "posts")
        try await withDashboard(database, token: "s3cret token") { base in
            #expect(try await get(base + "/").status == 401)
            #expect(try await get(base + "/", headers: [("Authorization", "Bearer wrong")]).status == 401)
            #expect(try await get(base + "/", headers: [("Authorization", "Bearer s3cret token")]).status == 200)
            #expect(try await get(base + "/healthz").status == 200)
            let login = try await get(base + "/queue?name=posts&token=s3cret%20token")
            #expect(login.status == 303)
            #expect(login.headers["Location"].first == "/queue?name=posts", "the token leaves the address")
            let cookie = try #require(login.headers["Set-Cookie"].first)
            #expect(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && !cookie.contains("s3cret"))
            let pair = String(cookie.prefix { $0 != ";" })
            #expect(try await get(base + "/queue?name=posts", headers: [("Cookie", pair)]).status == 200)
            #expect(try await get(base + "/?token=nope").status == 401)
            let offSite = try await get(base + "//evil.example/?token=s3cret%20token")
            #expect(offSite.headers["Location"].first == "/evil.example/", "the token's redirect stays on this server")
            // With a token, any host name may be used (the dashboard may sit behind a proxy).
            #expect(try await get(base + "/", headers: [("Cookie", pair), ("Host", "queues.internal")]).status == 200)
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func aNonLoopbackAddressNeedsAToken() throws {
        #expect(throws: BackgroundSyncError.self) { try Dashboard.Configuration(host: "0.0.0.0").validate() }
        #expect(throws: BackgroundSyncError.self) { try Dashboard.Configuration(host: "127.0.0.1", token: " ").validate() }
        #expect(throws: BackgroundSyncError.self) { try Dashboard.Configuration(host: "127.0.0.1.nip.example").validate() }
        #expect(DashboardConfiguration.isLoopback("127.0.0.1") && DashboardConfiguration.isLoopback("::1"))
        #expect(!DashboardConfiguration.isLoopback("127.0.0.256") && !DashboardConfiguration.isLoopback("127.0.0"))
        try Dashboard.Configuration(host: "0.0.0.0", token: "t").validate()
        try Dashboard.Configuration(host: "localhost").validate()
        #expect(try Dashboard.Configuration.listenAddress("0.0.0.0:8080") == ("0.0.0.0", 8080))
        #expect(try Dashboard.Configuration.listenAddress("[::1]:9") == ("::1", 9))
        #expect(try Dashboard.Configuration.listenAddress("8081") == ("127.0.0.1", 8081))
        #expect(throws: BackgroundSyncError.self) { try Dashboard.Configuration.listenAddress("host:99999") }
        #expect(throws: BackgroundSyncError.self) { try Dashboard.Configuration.listenAddress("[::1]9") }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func anAddressInUseIsAOneLineError() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        try await withDashboard(database) { base in
            let port = try #require(Int(base.split(separator: ":").last ?? ""))
            let second = try Dashboard(
                database: database, configuration: .init(port: port),
                logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
            let error = await #expect(throws: BackgroundSyncError.self) { try await second.run() }
            #expect(error?.message == "cannot listen on 127.0.0.1:\(port): Address already in use")
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func bgsyncDashboardRefusesAnOpenAddressWithoutAToken() async throws {
        let run = try await bgsync(["dashboard", "--db", "/nonexistent/q.sqlite", "--listen", "0.0.0.0:0"])
        #expect(run.status == 2)
        #expect(run.stderr == "bgsync: refusing to serve the dashboard on 0.0.0.0 without a token (give --token or $BGSYNC_DASHBOARD_TOKEN, or listen on 127.0.0.1)\n")
    }
}
