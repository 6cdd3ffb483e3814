import ArgumentParser
import BackgroundSync
import BackgroundSyncDashboard
import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `bgsync dashboard`: a web page on the queues of a database.
struct DashboardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dashboard",
        abstract: "Serve a web page on the queues: sizes, entries, dead letters, and the actions to fix them.",
        discussion: """
            The page lists every queue (pending entries, dead letters, the oldest entry's age, \
            whether it is paused, the next attempt), a queue's entries page by page, one entry \
            (secrets masked) with its last failure, and the dead letters with the server's answer. \
            It can sync a queue now, requeue dead letters, delete an entry and purge dead letters, \
            each confirmed. It refreshes itself while open. GET /healthz answers 200 while the \
            database can be read. SIGTERM or SIGINT stops it.

            It listens on 127.0.0.1 unless told otherwise; on any other address it needs a token \
            (--token or $BGSYNC_DASHBOARD_TOKEN), which every request but /healthz then carries: \
            open the page once as http://HOST:PORT/?token=TOKEN (a cookie keeps it), or send \
            "Authorization: Bearer TOKEN".

            Examples:
              bgsync dashboard --db /var/lib/app/queue.sqlite
              BGSYNC_DASHBOARD_TOKEN=… bgsync dashboard --listen 0.0.0.0:8080 --db postgres://…

            GET /metrics serves the store's figures per queue in Prometheus' text format; see \
            `bgsync run --listen` for a daemon's own.
            """)

    @OptionGroup var database: DatabaseOptions

    @OptionGroup var server: ListenOptions

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "notice"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
    }

    func run() async throws {
        logToStandardError(at: Logger.Level(rawValue: logLevel) ?? .notice)
        let logger = Logger(label: "bgsync.dashboard")
        try await reportingErrors {
            guard #available(macOS 14, iOS 17, tvOS 17, *) else {
                throw CLIError("bgsync dashboard needs macOS 14 or later")
            }
            // Refused before the database is opened: nothing is served, nothing is touched.
            var configuration = try server.configuration(pages: true, default: "127.0.0.1:8080")
            try await database.withDatabase(.write) { db in
                configuration.storeDescription = db.identity
                let host = configuration.host
                let dashboard = try Dashboard(database: db, configuration: configuration, logger: logger) { port in
                    server.announce("bgsync dashboard", host: host, port: port, on: db.identity)
                }
                var group = ServiceGroupConfiguration(services: [.init(service: dashboard)], logger: logger)
                group.gracefulShutdownSignals = [.sigterm, .sigint]
                try await ServiceGroup(configuration: group).run()
            }
        }
    }
}

/// `--listen` and `--token`, shared by `dashboard` (its page) and `run` (its /metrics and /healthz).
struct ListenOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The address to listen on: host:port, [ipv6]:port or a port (0: a free one).", valueName: "address"))
    var listen: String?

    @Option(help: ArgumentHelp("The token every request but /healthz must carry (default: $BGSYNC_DASHBOARD_TOKEN); required off loopback.", valueName: "token"))
    var token: String?

    /// `--token`, then a non-empty `$BGSYNC_DASHBOARD_TOKEN`.
    var resolvedToken: String? {
        if let token { return token }
        guard let environment = ProcessInfo.processInfo.environment["BGSYNC_DASHBOARD_TOKEN"], !environment.isEmpty else { return nil }
        return environment
    }

    /// The server's configuration, checked (a non-loopback address needs a token), with a
    /// Prometheus registry bootstrapped as the process's metrics backend for `/metrics`.
    func configuration(pages: Bool, default defaultAddress: String) throws -> DashboardConfiguration {
        let (host, port) = try DashboardConfiguration.listenAddress(listen ?? defaultAddress)
        var configuration = DashboardConfiguration(host: host, port: port, token: resolvedToken, pages: pages)
        try configuration.validate()
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        configuration.metrics = registry
        return configuration
    }

    /// Says where the server listens, on stdout at once (it may be a pipe): a script waits for it.
    func announce(_ what: String, host: String, port: Int, on store: String) {
        let shown = host.contains(":") ? "[\(host)]" : host
        FileHandle.standardOutput.write(Data("\(what): http://\(shown):\(port)/ on \(store)\n".utf8))
    }
}
