import BackgroundSync
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle

/// A web page on the queues of a store: every queue with its sizes, a queue's entries page by
/// page, one entry (secrets masked), the dead letters, and the actions an operator needs (sync a
/// queue now, requeue dead letters, delete an entry, purge dead letters), each confirmed and each
/// a POST. The page refreshes itself while open. `GET /healthz` answers 200 while the store can be
/// read, 503 otherwise. With a ``Configuration/metrics`` registry, `GET /metrics` serves it in
/// Prometheus' text format, with the store's own figures per queue added at each scrape
/// (`background_sync_store_pending`, `…_dead_letters`, `…_oldest_age_seconds`, `…_up`).
/// Without ``Configuration/pages``, only `/healthz` and `/metrics` are served (a daemon's port).
///
/// Run it as a `Service` (in a `ServiceGroup`, or `try await dashboard.run()`); it serves until
/// its task is cancelled or the group shuts down. `bgsync dashboard` is this type on a database
/// named on the command line.
///
/// Safe by default: it listens on loopback unless told otherwise, and refuses any other address
/// without a ``Configuration/token``. Without a token, requests must name a loopback host (a page
/// elsewhere cannot reach it by DNS rebinding); with one, every request but `/healthz` must carry
/// it. Actions need a per-process form token and refuse cross-site requests. Every stored value is
/// escaped, and the content security policy allows no inline script.
@available(macOS 14, iOS 17, tvOS 17, *)
public struct Dashboard: Service {
    /// Where the dashboard listens, who may use it, and what it serves.
    public typealias Configuration = DashboardConfiguration

    let database: any QueueDatabase
    let configuration: Configuration
    let logger: Logger
    let onRunning: @Sendable (Int) async -> Void
    let syncs: SyncRunner
    let storeMetrics: StoreMetrics?
    /// The token every form carries, new for each dashboard: a page of another site cannot read it.
    let formToken: String

    /// A dashboard on `database`. `onRunning` is called with the port once the server listens.
    public init(
        database: any QueueDatabase, configuration: Configuration, logger: Logger = Logger(label: "bgsync.dashboard"),
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) throws {
        try configuration.validate()
        self.database = database
        self.configuration = configuration
        self.logger = logger
        self.onRunning = onRunning
        self.syncs = SyncRunner(database: database, logger: logger)
        self.storeMetrics = configuration.metrics.map(StoreMetrics.init)
        self.formToken = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }.map { String(format: "%02x", $0) }.joined()
    }

    /// Serves the dashboard and runs the syncs it starts, until cancelled or shut down.
    public func run() async throws {
        let router = Router()
        router.add(middleware: AccessMiddleware(token: configuration.token))
        addRoutes(to: router)
        let listening = Locked(false)
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: nil),
            onServerRunning: { [onRunning] channel in
                listening.withLock { $0 = true }
                await onRunning(channel.localAddress?.port ?? 0)
            },
            logger: logger)
        try await withThrowingDiscardingTaskGroup { group in
            // A shutdown stops the syncs too: a cancelled replay gives its entries back.
            group.addTask { await cancelWhenGracefulShutdown { await syncs.run() } }
            group.addTask {
                defer { syncs.finish() }
                do {
                    try await app.run()
                } catch where !(error is CancellationError) && !listening.withLock({ $0 }) {
                    // The address is taken, not one of this machine's, or not a name that resolves.
                    let reason = (error as? IOError).map { String(cString: strerror($0.errnoCode)) } ?? "\(error)"
                    throw BackgroundSyncError(.invalidRequest, "cannot listen on \(configuration.host):\(configuration.port): \(reason)")
                }
            }
        }
    }

    // MARK: Routes

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("/healthz") { _, _ -> Response in
            do {
                _ = try await database.queueNames()
                return Self.text("ok\n", status: .ok)
            } catch {
                // No detail for whoever asks: the log has it.
                logger.info("health check: the store cannot be read", metadata: ["error": "\(error)"])
                return Self.text("the store cannot be read\n", status: .serviceUnavailable)
            }
        }
        if let storeMetrics {
            router.get("/metrics") { _, _ -> Response in
                let text = await storeMetrics.scrape({ try await database.queueSummaries() }, now: Date())
                var headers = Self.securityHeaders
                headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
            }
        }
        guard configuration.pages else { return }
        router.get("/static/dashboard.css") { _, _ in
            Self.asset(StaticAssets.css, type: "text/css; charset=utf-8")
        }
        router.get("/static/dashboard.js") { _, _ in
            Self.asset(StaticAssets.script, type: "text/javascript; charset=utf-8")
        }
        router.get("/") { request, _ in
            try await page(request) { now in
                let summaries = try await database.queueSummaries()
                return ("Queues", pages.queueList(summaries, syncs: syncs.outcomes(), now: now, notice: notice(request)))
            }
        }
        router.get("/queue") { request, _ in
            try await page(request) { now in
                let query = request.uri.queryParameters
                guard let name = query.get("name").map({ String($0) }), !name.isEmpty else { throw PageError.notFound("no queue named") }
                let state: EntryState = query.get("state") == "dead" ? .dead : .pending
                let after = query.get("after").flatMap { Int64($0) }
                guard try await database.queueNames().contains(name) else { throw PageError.notFound("no queue named '\(name)'") }
                let fetched = try await database.entries(queueName: name, state: state, afterPosition: after, limit: configuration.pageSize + 1)
                let view = QueuePageView(
                    name: name, state: state, after: after,
                    entries: Array(fetched.prefix(configuration.pageSize)), hasMore: fetched.count > configuration.pageSize,
                    pending: try await database.countEntries(queueName: name, state: .pending),
                    dead: try await database.countEntries(queueName: name, state: .dead),
                    sync: syncs.outcomes()[name])
                return ("Queue \(name)", pages.queue(view, now: now, notice: notice(request)))
            }
        }
        router.get("/entry") { request, _ in
            try await page(request) { now in
                guard let id = request.uri.queryParameters.get("id").flatMap({ Int64($0) }),
                    let entry = try await database.entry(id: id)
                else { throw PageError.notFound("no such entry (delivered or deleted?)") }
                return ("Entry \(id)", pages.entry(entry, now: now))
            }
        }
        router.post("/sync") { request, _ in
            try await action(request) { fields in
                let name = try Self.queueName(fields)
                guard try await database.queueNames().contains(name) else { throw PageError.notFound("no queue named '\(name)'") }
                guard !name.hasPrefix(Queue.outboxNamePrefix) else {
                    throw PageError.refused("'\(name)' is an outbox: its records are uploaded by the app that owns it")
                }
                guard fields["confirm"] == "yes" else {
                    return .confirm(pages.confirm(
                        question: "Sync queue '\(name)' now? Its due entries are sent from this dashboard's process, in order, whatever their age (none expires here), without the app's hooks or key: entries with encrypted secret header fields are set aside as dead letters (requeue them, then sync from the app).",
                        action: "/sync", fields: ["name": name], button: "Sync now", cancel: DashboardPages.queueLink(name)))
                }
                syncs.request(name)
                return .done(DashboardPages.queueLink(name, notice: "sync-started"))
            }
        }
        router.post("/requeue") { request, _ in
            try await action(request) { fields in
                let name = try Self.queueName(fields)
                let id = fields["id"].flatMap { Int64($0) }
                guard fields["confirm"] == "yes" else {
                    let what = id.map { "dead letter \($0)" } ?? "every dead letter"
                    return .confirm(pages.confirm(
                        question: "Requeue \(what) of '\(name)'? It goes back to its place in the queue, attempts cleared.",
                        action: "/requeue", fields: ["name": name, "id": id.map(String.init) ?? ""],
                        button: "Requeue", cancel: DashboardPages.queueLink(name, state: .dead)))
                }
                let moved = try await database.requeueDeadEntries(queueName: name, ids: id.map { [$0] })
                // As `Queue.requeueAllDeadLetters()` does: the services running the queue replay it.
                if moved > 0 { try await database.registerSyncTag(Queue.syncTag(forQueueNamed: name), at: Date()) }
                return .done(DashboardPages.queueLink(name, state: .dead, notice: "requeued-\(moved)"))
            }
        }
        router.post("/purge") { request, _ in
            try await action(request) { fields in
                let name = try Self.queueName(fields)
                guard fields["confirm"] == "yes" else {
                    let count = try await database.countEntries(queueName: name, state: .dead)
                    return .confirm(pages.confirm(
                        question: "Delete the \(count) dead letters of '\(name)' for good?",
                        action: "/purge", fields: ["name": name], button: "Purge dead letters", danger: true,
                        cancel: DashboardPages.queueLink(name, state: .dead)))
                }
                let deleted = try await database.deleteEntries(queueName: name, state: .dead)
                return .done(DashboardPages.queueLink(name, state: .dead, notice: "purged-\(deleted)"))
            }
        }
        router.post("/delete") { request, _ in
            try await action(request) { fields in
                guard let id = fields["id"].flatMap({ Int64($0) }) else { throw PageError.refused("no entry id given") }
                guard fields["confirm"] == "yes" else {
                    guard let entry = try await database.entry(id: id) else { throw PageError.notFound("no such entry (delivered or deleted?)") }
                    return .confirm(pages.confirm(
                        question: "Delete entry \(id) (\(entry.requestData.method) \(MaskedRequest.url(entry.requestData.url))) of '\(entry.queueName)' for good? It will never be sent.",
                        action: "/delete", fields: ["id": String(id)], button: "Delete", danger: true,
                        cancel: "/entry?id=\(id)"))
                }
                let queue = try await database.entry(id: id)?.queueName
                let deleted = try await database.deleteEntries(ids: [id])
                return .done(queue.map { DashboardPages.queueLink($0, notice: "deleted-\(deleted)") } ?? "/?notice=deleted-\(deleted)")
            }
        }
    }

    var pages: DashboardPages {
        DashboardPages(storeDescription: configuration.storeDescription, formToken: formToken)
    }

    // MARK: Responses

    /// A page: the whole document, or only its live region when the page's script asks for it.
    func page(_ request: Request, _ body: (Date) async throws -> (title: String, main: String)) async throws -> Response {
        let live = request.headers[Self.liveHeader] == "1"
        do {
            let (title, main) = try await body(Date())
            return Self.html(live ? main : pages.document(title: title, main: main, live: true))
        } catch {
            return problem(error, title: "Not found", storeFailure: "the store cannot be read")
        }
    }

    /// The page that says why a page or an action failed: a ``PageError``'s message and status,
    /// or `storeFailure` and the error, 503.
    func problem(_ error: any Error, title: String, storeFailure: String) -> Response {
        guard let error = error as? PageError else {
            return Self.html(
                pages.document(title: "Store error", main: pages.problem("\(storeFailure): \(error)"), live: false),
                status: .serviceUnavailable)
        }
        return Self.html(pages.document(title: title, main: pages.problem(error.message), live: false), status: error.status)
    }

    /// What an action handler decided.
    enum ActionOutcome {
        /// Ask first: this page has the same form, confirmed.
        case confirm(String)
        /// Done: see this address (303).
        case done(String)
    }

    /// An action (a POST with a form): its fields, its outcome, or a page that says why it failed.
    func action(_ request: Request, _ body: ([String: String]) async throws -> ActionOutcome) async throws -> Response {
        do {
            let buffer = try await request.body.collect(upTo: 64 * 1024)
            let fields = formFields(String(buffer: buffer))
            guard let token = fields["form"], constantTimeEqual(token, formToken) else {
                throw PageError.forbidden("this form is out of date or came from another site: reload the page and try again")
            }
            switch try await body(fields) {
            case .confirm(let main):
                return Self.html(pages.document(title: "Confirm", main: main, live: false))
            case .done(let location):
                return Response(status: .seeOther, headers: [.location: location, .cacheControl: "no-store"])
            }
        } catch {
            return problem(error, title: "Refused", storeFailure: "the action failed")
        }
    }

    /// The outcome of an action, named in the address it redirected to.
    func notice(_ request: Request) -> String? {
        guard let code = request.uri.queryParameters.get("notice") else { return nil }
        if code == "sync-started" { return "Sync started: the sizes below follow it." }
        let parts = code.split(separator: "-")
        let count = parts.count == 2 ? Int(parts[1]) : nil
        switch (parts.first, count) {
        case ("requeued"?, let count?): return "Requeued \(count) dead letter\(count == 1 ? "" : "s")."
        case ("purged"?, let count?): return "Deleted \(count) dead letter\(count == 1 ? "" : "s")."
        case ("deleted"?, let count?): return count == 0 ? "The entry was already gone." : "Deleted the entry."
        default: return nil
        }
    }

    static let liveHeader = HTTPField.Name("X-Dashboard-Live")!

    static func queueName(_ fields: [String: String]) throws -> String {
        guard let name = fields["name"], !name.isEmpty else { throw PageError.refused("no queue name given") }
        return name
    }

    /// Header fields every answer carries: nothing cached, no framing, no inline script, no
    /// referrer, no type sniffing.
    static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy:
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        .xContentTypeOptions: "nosniff",
        HTTPField.Name("Referrer-Policy")!: "no-referrer",
        HTTPField.Name("X-Frame-Options")!: "DENY",
        .cacheControl: "no-store",
    ]

    static func html(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        var headers = securityHeaders
        headers[.contentType] = "text/html; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func text(_ text: String, status: HTTPResponse.Status) -> Response {
        var headers = securityHeaders
        headers[.contentType] = "text/plain; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func asset(_ text: String, type: String) -> Response {
        var headers = securityHeaders
        headers[.contentType] = type
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}

/// Why a page or an action could not be served, shown to the operator.
struct PageError: Error {
    var message: String
    var status: HTTPResponse.Status

    static func notFound(_ message: String) -> PageError { PageError(message: message, status: .notFound) }
    static func refused(_ message: String) -> PageError { PageError(message: message, status: .badRequest) }
    static func forbidden(_ message: String) -> PageError { PageError(message: message, status: .forbidden) }
}

/// Whether two strings are equal, in a time that does not depend on where they differ.
func constantTimeEqual(_ a: String, _ b: String) -> Bool {
    SHA256.hash(data: Data(a.utf8)) == SHA256.hash(data: Data(b.utf8))
}

/// Where the dashboard listens, and who may use it.
public struct DashboardConfiguration: Sendable {
    /// The address to listen on: `127.0.0.1` (the default), `::1`, `localhost`, or any other
    /// address when ``token`` is set.
    public var host: String
    /// The port; 0 picks a free one (see the `onRunning` callback).
    public var port: Int
    /// The token every request must carry (`Authorization: Bearer …`, or once in the address
    /// as `?token=…`, which sets a cookie). `nil`: loopback only, no token.
    public var token: String?
    /// How the page names the store in its header (a file path or a URL without password).
    public var storeDescription: String
    /// Entries on one page of a queue.
    public var pageSize: Int
    /// Whether the pages and their actions are served; `false`: only `/healthz` and `/metrics`.
    public var pages: Bool
    /// The registry `/metrics` serves (the one the process's `MetricsSystem` was bootstrapped
    /// with, so that the library's counters are in it); `nil`: no `/metrics`.
    public var metrics: PrometheusCollectorRegistry?

    /// A configuration; ``validate()`` checks it.
    public init(
        host: String = "127.0.0.1", port: Int = 8080, token: String? = nil, storeDescription: String = "", pageSize: Int = 50,
        pages: Bool = true, metrics: PrometheusCollectorRegistry? = nil
    ) {
        self.host = host
        self.port = port
        self.token = token
        self.storeDescription = storeDescription
        self.pageSize = pageSize
        self.pages = pages
        self.metrics = metrics
    }

    /// Reads `host:port`, `[v6]:port` or a bare port (on `127.0.0.1`).
    public static func listenAddress(_ text: String) throws -> (host: String, port: Int) {
        let invalid = BackgroundSyncError(.invalidRequest, "invalid listen address '\(text)': expected host:port, [ipv6]:port or a port")
        var host = "127.0.0.1"
        var portText = Substring(text)
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw invalid }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw invalid }
            portText = rest.dropFirst()
        } else if let colon = text.lastIndex(of: ":") {
            host = String(text[..<colon])
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portText), (0...65_535).contains(port) else { throw invalid }
        return (host, port)
    }

    /// Whether `host` names this machine's loopback interface: `localhost`, `::1`, or an IPv4
    /// address `127.x.y.z` written as four numbers (a DNS name that starts with `127.` is not one).
    public static func isLoopback(_ host: String) -> Bool {
        let lowered = host.lowercased()
        if lowered == "localhost" || lowered == "::1" { return true }
        let parts = lowered.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "127" else { return false }
        return parts.allSatisfy { part in
            !part.isEmpty && part.count <= 3 && part.allSatisfy(\.isASCII) && part.allSatisfy(\.isNumber) && Int(part)! <= 255
        }
    }

    /// Refuses a configuration that would expose the queues: a non-loopback address without a
    /// token, an empty token, a page size out of range.
    public func validate() throws {
        if let token, token.trimmingCharacters(in: .whitespaces).isEmpty {
            throw BackgroundSyncError(.invalidRequest, "the dashboard token is empty")
        }
        if token == nil, !Self.isLoopback(host) {
            throw BackgroundSyncError(
                .invalidRequest,
                "refusing to serve the dashboard on \(host) without a token (give --token or $BGSYNC_DASHBOARD_TOKEN, or listen on 127.0.0.1)")
        }
        guard (1...1_000).contains(pageSize) else {
            throw BackgroundSyncError(.invalidRequest, "the dashboard page size must be between 1 and 1000")
        }
    }
}
