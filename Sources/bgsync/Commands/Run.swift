import ArgumentParser
import BackgroundSync
import Foundation
import BackgroundSyncDashboard
import Logging
import ServiceLifecycle

/// `bgsync run`: the daemon.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay every queue of the database automatically, as a daemon.",
        discussion: """
            Runs a SyncService over the database: at start, when a request is queued (by any \
            process: a PostgreSQL store notifies; either store is also polled, every \
            --poll-interval seconds), when connectivity \
            returns (netlink on Linux) and when a backoff ends. Logs to stderr. SIGTERM or SIGINT \
            stops it gracefully: sends in flight finish (for --shutdown-timeout seconds at most, \
            then they are cancelled), their entries are deleted or stay queued, nothing is lost. Started on several hosts with one postgres:// URL, the daemons form a \
            fleet: each queue's entries are sent once, an ordered queue in order.

            Examples:
              bgsync run --db /var/lib/app/queue.sqlite
              BGSYNC_DB=postgres://bgsync:PASSWORD@db.internal/app bgsync run --concurrent metrics=16
              bgsync run --listen 127.0.0.1:9090    # GET /metrics, GET /healthz
            """)

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Seconds between looks at the database for work other processes queued.")
    var pollInterval: Double = 1

    @Option(help: "Also probe this URL to tell a reachable server from a mere network route.")
    var probeURL: String?

    @Flag(help: "Do not watch connectivity: assume the network is always up.")
    var noConnectivityMonitor = false

    @Option(
        name: .customLong("concurrent"),
        help: ArgumentHelp(
            "Replay QUEUE with up to N entries in flight, in no particular order (repeatable; other queues are replayed in order). Every worker of a fleet must be started with the same ones.",
            valueName: "queue=n"))
    var concurrent: [String] = []

    @Option(help: "Seconds that sends in flight get to finish after SIGTERM or SIGINT, before they are cancelled.")
    var shutdownTimeout: Double = 30

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    @OptionGroup(title: "Observability (GET /metrics in Prometheus' text format, GET /healthz)")
    var server: ListenOptions

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
        guard shutdownTimeout >= 0, shutdownTimeout <= 86_400 else {
            throw ValidationError("--shutdown-timeout must be between 0 and 86400 seconds")
        }
        guard pollInterval >= 0.01, pollInterval <= 3600 else {
            throw ValidationError("--poll-interval must be between 0.01 and 3600 seconds")
        }
        _ = try inFlightLimits()
    }

    /// `--concurrent QUEUE=N`, by queue name.
    func inFlightLimits() throws -> [String: Int] {
        var limits: [String: Int] = [:]
        for item in concurrent {
            // The last '=' separates: a queue name may hold one.
            guard let separator = item.lastIndex(of: "="), let count = Int(item[item.index(after: separator)...]),
                (1...1000).contains(count), separator > item.startIndex
            else {
                throw ValidationError("--concurrent takes QUEUE=N with N from 1 to 1000, not '\(item)'")
            }
            limits[String(item[..<separator])] = count
        }
        return limits
    }

    func run() async throws {
        logToStandardError(at: Logger.Level(rawValue: logLevel) ?? .info)
        let logger = Logger(label: "bgsync")
        try await reportingErrors {
            var connectivity: (any ConnectivityMonitor)? = noConnectivityMonitor ? nil : ConnectivityMonitors.system()
            if let probeURL {
                guard let url = URL(string: probeURL), url.scheme == "http" || url.scheme == "https" else {
                    throw CLIError("invalid --probe-url '\(probeURL)'")
                }
                connectivity = ProbeConnectivityMonitor(url: url, base: connectivity)
            }
            // Checked (and the metrics backend set up) before the database is opened.
            var observability: DashboardConfiguration?
            if server.listen != nil {
                guard #available(macOS 14, iOS 17, tvOS 17, *) else { throw CLIError("--listen needs macOS 14 or later") }
                observability = try server.configuration(pages: false, default: "127.0.0.1:9090")
            } else if server.token != nil {
                throw CLIError("--token needs --listen")
            }
            // A database that fails while the daemon runs ends it with its own status, as any command.
            try await database.withDatabase(.create, logger: logger) { db in
                let limits = try inFlightLimits()
                let service = SyncService(
                    database: db,
                    configuration: .init(
                        connectivity: connectivity, logger: logger,
                        pollInterval: .milliseconds(Int64(pollInterval * 1000))),
                    optionsForQueue: { name in
                        var options = QueueOptions(logger: logger)
                        if let limit = limits[name] { options.maxConcurrentReplays = limit }
                        return options
                    })
                logger.info("bgsync run: replaying the queues of \(db.identity)")
                var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: service)]
                if #available(macOS 14, iOS 17, tvOS 17, *), var configuration = observability {
                    configuration.storeDescription = db.identity
                    let host = configuration.host
                    let endpoint = try Dashboard(database: db, configuration: configuration, logger: logger) { port in
                        server.announce("bgsync run: /metrics and /healthz", host: host, port: port, on: db.identity)
                    }
                    services.append(.init(service: endpoint))
                }
                var group = ServiceGroupConfiguration(services: services, logger: logger)
                group.gracefulShutdownSignals = [.sigterm, .sigint]
                // Past it, the sends still in flight are cancelled: their entries stay queued.
                group.maximumGracefulShutdownDuration = .milliseconds(Int64(shutdownTimeout * 1000))
                try await ServiceGroup(configuration: group).run()
            }
        }
    }
}
