import ArgumentParser
import BackgroundSync
import BackgroundSyncDashboard
import Foundation
import Logging
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
            (--token or $BGSYNC_DASHBOARD_TOKEN), which every request then carries: open the page \
            once as http://HOST:PORT/?token=TOKEN (a cookie keeps it), or send \
            "Authorization: Bearer TOKEN".

            Examples:
              bgsync dashboard --db /var/lib/app/queue.sqlite
              BGSYNC_DASHBOARD_TOKEN=… bgsync dashboard --listen 0.0.0.0:8080 --db postgres://…
            """)

    @OptionGroup var database: DatabaseOptions

    @Option(help: ArgumentHelp("The address to listen on: host:port, [ipv6]:port or a port (0: a free one).", valueName: "address"))
    var listen: String = "127.0.0.1:8080"

    @Option(help: ArgumentHelp("The token every request must carry (default: $BGSYNC_DASHBOARD_TOKEN); required off loopback.", valueName: "token"))
    var token: String?

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "notice"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
    }

    /// `--token`, then a non-empty `$BGSYNC_DASHBOARD_TOKEN`.
    var resolvedToken: String? {
        if let token { return token }
        guard let environment = ProcessInfo.processInfo.environment["BGSYNC_DASHBOARD_TOKEN"], !environment.isEmpty else { return nil }
        return environment
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .notice
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "bgsync.dashboard")
        try await reportingErrors {
            guard #available(macOS 14, iOS 17, tvOS 17, *) else {
                throw CLIError("bgsync dashboard needs macOS 14 or later")
            }
            let (host, port) = try Dashboard.Configuration.listenAddress(listen)
            var configuration = Dashboard.Configuration(host: host, port: port, token: resolvedToken)
            // Refused before the database is opened: nothing is served, nothing is touched.
            try configuration.validate()
            try await database.withDatabase(.write) { db in
                configuration.storeDescription = db.identity
                let dashboard = try Dashboard(database: db, configuration: configuration, logger: logger) { port in
                    let shown = host.contains(":") ? "[\(host)]" : host
                    // Written at once (stdout may be a pipe): a script waits for this line.
                    FileHandle.standardOutput.write(Data("bgsync dashboard: http://\(shown):\(port)/ on \(db.identity)\n".utf8))
                }
                var group = ServiceGroupConfiguration(services: [.init(service: dashboard)], logger: logger)
                group.gracefulShutdownSignals = [.sigterm, .sigint]
                try await ServiceGroup(configuration: group).run()
            }
        }
    }
}
