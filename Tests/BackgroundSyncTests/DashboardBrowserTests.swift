import BackgroundSync
import BackgroundSyncDashboard
import Foundation
import Logging
import Testing

/// The dashboard in a real browser (Debian's headless `chromium`): its page renders and runs its
/// script, a dead letter is requeued by clicking through the confirmation, the page follows the
/// store by itself, and a hostile stored request does not run. With `BGSYNC_SCREENSHOTS=DIR`, the
/// pages are also saved as PNGs (the README's screenshots).
@Suite(
    "Dashboard in a browser", .serialized,
    .enabled(if: HeadlessChromium.unavailableReason == nil, Comment(rawValue: HeadlessChromium.unavailableReason ?? "")))
struct DashboardBrowserTests {
    /// The dashboard on a free port and a browser, for the duration of `body`.
    @available(macOS 14, iOS 17, tvOS 17, *)
    func withBrowser(
        _ database: any QueueDatabase, _ body: @escaping @Sendable (_ base: String, _ page: BrowserPage) async throws -> Void
    ) async throws {
        let browser = try await HeadlessChromium()
        do {
            try await serveDashboard(database, .init(port: 0, storeDescription: "/var/lib/app/queue.sqlite")) { base in
                try await browser.withPage { page in try await body(base, page) }
            }
        } catch {
            await browser.stop()
            throw error
        }
        await browser.stop()
    }

    func push(_ database: any QueueDatabase, _ queue: String, url: String = "https://api.example.com/posts", body: String = "{}",
        headers: [String: String] = ["Content-Type": "application/json"]) async throws -> Int64
    {
        try await pushPOST(database, queue, url: url, body: body, headers: headers)
    }

    /// Saves the page as `name`.png when `$BGSYNC_SCREENSHOTS` names a folder.
    func screenshot(_ page: BrowserPage, _ name: String) async throws {
        guard let folder = ProcessInfo.processInfo.environment["BGSYNC_SCREENSHOTS"], !folder.isEmpty else { return }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try await page.screenshot().write(to: URL(fileURLWithPath: folder).appendingPathComponent(name + ".png"))
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func theQueueListRendersAndADeadLetterIsRequeuedByClicking() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        for index in 0..<2 { _ = try await push(database, "posts", body: "{\"title\":\"post \(index)\"}") }
        _ = try await database.pushEntry(
            UnidentifiedQueueStoreEntry(
                requestData: .init(url: "https://metrics.example.com/ingest", method: "POST", body: Data("{}".utf8)),
                timestamp: Date().addingTimeInterval(-1_800), attempts: 3, nextAttemptAt: Date().addingTimeInterval(95),
                lastFailure: ReplayFailure(kind: .httpStatus, status: 503, message: "HTTP 503")),
            queueName: "metrics", at: .tail, registeringSyncTag: nil)
        _ = try await database.pushEntry(
            UnidentifiedQueueStoreEntry(
                requestData: .init(url: "https://billing.example.com/invoices", method: "POST", body: Data("{}".utf8)),
                timestamp: Date().addingTimeInterval(-7_300), attempts: 1,
                lastFailure: ReplayFailure(kind: .httpStatus, status: 401, message: "HTTP 401")),
            queueName: "billing", at: .tail, registeringSyncTag: nil)
        let dead = try await push(database, "posts", body: "{\"title\":\"\"}")
        try await database.setAsideEntries(
            queueName: "posts", ids: [dead],
            failure: ReplayFailure(kind: .httpStatus, status: 422, message: "HTTP 422", responseExcerpt: Data(#"{"error":"title is empty"}"#.utf8)))
        try await withBrowser(database) { base, page in
            try await page.open(base + "/")
            #expect(try await page.evaluate("document.querySelector('tr[data-queue=\"posts\"] td.num').textContent") as? String == "2")
            #expect(try await page.evaluate("document.querySelectorAll('#queues tbody tr').length") as? Int == 3)
            #expect(try await page.evaluate("document.querySelector('tr[data-queue=\"billing\"]').textContent.includes('paused: HTTP 401')") as? Bool == true)
            #expect(try await page.evaluate("document.querySelector('tr[data-queue=\"metrics\"]').textContent.includes('retrying: HTTP 503')") as? Bool == true)
            #expect(try await page.evaluate("getComputedStyle(document.querySelector('header')).display") as? String == "flex",
                "the style sheet loaded")
            try await screenshot(page, "dashboard-queues")

            try await page.open(base + "/queue?name=posts")
            try await screenshot(page, "dashboard-queue")
            try await page.open(base + "/entry?id=\(dead)")
            try await screenshot(page, "dashboard-entry")
            try await page.open(base + "/queue?name=posts&state=dead")
            try await screenshot(page, "dashboard-dead-letters")

            // Requeue: the row's button, then the confirmation's.
            try await page.evaluate("document.querySelector('tr[data-entry=\"\(dead)\"] form[action=\"/requeue\"] button').click()")
            try await page.waitFor("document.getElementById('question') !== null && document.readyState === 'complete'")
            #expect(try await database.entry(id: dead)?.state == .dead, "the first click only asks")
            try await screenshot(page, "dashboard-confirm")
            try await page.evaluate("document.querySelector('main form button').click()")
            try await page.waitFor("document.querySelector('.notice') !== null")
            #expect(try await page.evaluate("document.querySelector('.notice').textContent") as? String == "Requeued 1 dead letter.")
            #expect(try await database.entry(id: dead)?.state == .pending)
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func thePageFollowsTheStoreWithoutReloading() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        _ = try await push(database, "posts")
        try await withBrowser(database) { base, page in
            try await page.open(base + "/queue?name=posts")
            try await page.evaluate("window.sameDocument = true")
            #expect(try await page.evaluate("document.getElementById('pending-count').textContent") as? String == "1")
            let added = try await push(database, "posts")
            try await page.waitFor("document.getElementById('pending-count').textContent === '2'")
            try await page.waitFor("document.querySelector('tr[data-entry=\"\(added)\"]') !== null")
            #expect(try await page.evaluate("window.sameDocument") as? Bool == true, "updated in place, not reloaded")
            // While the operator selects text in it (an idempotency key to copy), the region stays.
            try await page.evaluate("window.getSelection().selectAllChildren(document.querySelector('h2'))")
            let third = try await push(database, "posts")
            try await page.waitFor("document.querySelector('main').dataset.held !== undefined")
            #expect(try await page.evaluate("document.getElementById('pending-count').textContent") as? String == "2")
            try await page.evaluate("window.getSelection().removeAllRanges()")
            try await page.waitFor("document.querySelector('tr[data-entry=\"\(third)\"]') !== null")
        }
    }

    @Test @available(macOS 14, iOS 17, tvOS 17, *)
    func aHostileStoredRequestDoesNotRunInThePage() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let name = "<img src=x onerror=\"window.pwned='queue name'\">"
        let body = "<script>window.pwned='body'</script><img src=x onerror=\"window.pwned='body image'\">"
        let id = try await push(
            database, name, body: body, headers: ["X-Note": "<svg onload=\"window.pwned='header'\"></svg>"])
        try await database.setAsideEntries(
            queueName: name, ids: [id],
            failure: ReplayFailure(kind: .httpStatus, status: 400, message: "bad",
                responseExcerpt: Data("<img src=x onerror=\"window.pwned='answer'\">".utf8)))
        try await withBrowser(database) { base, page in
            let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
            for path in ["/", "/queue?name=\(encoded)&state=dead", "/entry?id=\(id)"] {
                try await page.open(base + path)
                // Long enough for an image's error handler: the broken image would fail at once.
                try await Task.sleep(for: .milliseconds(300))
                #expect(try await page.evaluate("typeof window.pwned") as? String == "undefined", "\(path)")
                #expect(try await page.evaluate("document.querySelectorAll('main img, main svg, main script').length") as? Int == 0, "\(path)")
            }
            #expect(try await page.evaluate("document.getElementById('body').textContent") as? String == body, "the body shows as text")
        }
    }
}
