import BackgroundSync
import Foundation
import NIOSSL
import PostgresNIO

extension PostgresQueueDatabase {
    /// Where the store is and how to reach it. Every parameter of ``init(host:port:unixSocketPath:username:password:database:tls:schema:maximumConnections:connectTimeout:sessionCheckInterval:)``
    /// has a default; ``init(url:)`` reads a `postgres://` URL.
    public struct Configuration: Sendable {
        /// How the connection uses TLS, named as libpq's `sslmode`.
        public enum TLSMode: String, Sendable, CaseIterable {
            /// No TLS.
            case disable
            /// TLS when the server offers it, plain otherwise; the certificate is not verified
            /// (libpq's `allow` and `prefer`).
            case prefer
            /// TLS or no connection; the certificate is not verified (libpq's `require`).
            case require
            /// TLS, with a certificate signed by a trusted authority (libpq's `verify-ca`).
            case verifyCA = "verify-ca"
            /// TLS, with a trusted certificate for the host name (libpq's `verify-full`).
            case verifyFull = "verify-full"
        }

        /// The server's host name or address. Default: `127.0.0.1`.
        public var host: String
        /// The server's port. Default: 5432.
        public var port: Int
        /// A Unix-domain socket to connect through instead of `host` and `port`. Default: `nil`.
        public var unixSocketPath: String?
        /// The role to connect as. Default: `postgres`.
        public var username: String
        /// The role's password, if the server asks for one. Never written to logs or errors.
        /// Default: `nil`.
        public var password: String?
        /// The database; `nil` is the role's own, as libpq does. Default: `nil`.
        public var database: String?
        /// TLS. Default: ``TLSMode/prefer``.
        public var tls: TLSMode
        /// The PostgreSQL schema that holds the store's tables: several stores can share a
        /// database under different schemas. Lower-case letters, digits and `_`, not starting
        /// with a digit, at most 56 characters (the schema's notification channel, `bgsync_<schema>`,
        /// must fit PostgreSQL's 63). Default: `background_sync`.
        public var schema: String
        /// The most connections the store's pool opens (one more holds the instance's session
        /// lock and listens for pushes). The pool keeps one open (none when this is 1); the others
        /// close once unused for ``sessionCheckInterval`` (at most a minute). Default: 20.
        public var maximumConnections: Int
        /// How long to wait for a connection to be established. Default: 10 seconds.
        public var connectTimeout: Duration
        /// How often the session's connection (the one whose lock names this instance's claims, and
        /// that listens for pushes) is checked with a `SELECT 1`: one that is not answered within a
        /// third of this (at least 5 seconds) is closed and a new session connected. A connection dropped on the way
        /// without a word (a NAT or a load balancer ending an idle flow) would otherwise wait for
        /// notifications forever, while the server may end the session and free its claims. The
        /// pool's connection is checked the same way once no statement succeeded on the pool for
        /// this long, so that the next statement does not wait on a dropped one, and its other
        /// connections close once unused this long (at most a minute).
        /// Default: 30 seconds; at least 1 second.
        public var sessionCheckInterval: Duration

        /// Creates a configuration; every parameter has its default.
        public init(
            host: String = "127.0.0.1",
            port: Int = 5432,
            unixSocketPath: String? = nil,
            username: String = "postgres",
            password: String? = nil,
            database: String? = nil,
            tls: TLSMode = .prefer,
            schema: String = "background_sync",
            maximumConnections: Int = 20,
            connectTimeout: Duration = .seconds(10),
            sessionCheckInterval: Duration = .seconds(30)
        ) {
            self.host = host
            self.port = port
            self.unixSocketPath = unixSocketPath
            self.username = username
            self.password = password
            self.database = database
            self.tls = tls
            self.schema = schema
            self.maximumConnections = maximumConnections
            self.connectTimeout = connectTimeout
            self.sessionCheckInterval = sessionCheckInterval
        }

        /// Reads `postgres://user:password@host:port/database?sslmode=…&schema=…` (or
        /// `postgresql://`). User, password and database are percent-decoded (and may also be given
        /// as the `user`, `password` and `dbname` parameters); a `host` query
        /// parameter that starts with `/` is the folder of a Unix-domain socket (as in libpq:
        /// the socket is `<folder>/.s.PGSQL.<port>`). The query may also set `schema` and
        /// `max_connections` (the pool's size) and `connect_timeout` (seconds). A bad URL throws
        /// ``BackgroundSyncError/Code/invalidRequest`` with a message that never contains the password.
        public init(url: String) throws {
            let shown = Self.redacting(url)
            func invalid(_ why: String) -> BackgroundSyncError {
                BackgroundSyncError(.invalidRequest, "invalid PostgreSQL URL '\(shown)': \(why)")
            }
            guard let components = URLComponents(string: url) else { throw invalid("not a URL") }
            guard let scheme = components.scheme?.lowercased(), scheme == "postgres" || scheme == "postgresql" else {
                throw invalid("the scheme must be postgres:// or postgresql://")
            }
            // `postgres:/u:pw@h` would read as a database named `u:pw@h` on the default host.
            guard url.dropFirst(scheme.count).hasPrefix("://") else {
                throw invalid("the URL must start with postgres:// or postgresql://")
            }
            self.init()
            if let user = components.user, !user.isEmpty { username = user }
            password = components.password
            if let host = components.host, !host.isEmpty { self.host = host }
            if let port = components.port {
                guard (1...65535).contains(port) else { throw invalid("port \(port) is out of range") }
                self.port = port
            }
            let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
            if !path.isEmpty {
                guard !path.contains("/") else { throw invalid("the path must be one database name") }
                database = path
            }
            for item in components.queryItems ?? [] {
                let value = item.value ?? ""
                switch item.name {
                case "sslmode":
                    switch value {
                    case "allow", "prefer": tls = .prefer
                    case let mode: tls = try TLSMode(rawValue: mode).orThrow(invalid("unknown sslmode '\(mode)'"))
                    }
                case "schema":
                    schema = value
                case "password":
                    password = value
                case "user":
                    username = value
                case "dbname":
                    database = value
                case "host":
                    guard value.hasPrefix("/") else { host = value; continue }
                    unixSocketPath = value
                case "max_connections":
                    guard let count = Int(value), count >= 1 else {
                        throw invalid("max_connections must be a positive number")
                    }
                    maximumConnections = count
                case "connect_timeout":
                    guard let seconds = Double(value), seconds > 0, seconds <= 3600 else {
                        throw invalid("connect_timeout must be a number of seconds")
                    }
                    connectTimeout = .milliseconds(Int64(seconds * 1000))
                case "application_name", "target_session_attrs":
                    continue
                default:
                    throw invalid("unknown parameter '\(item.name)'")
                }
            }
            if let folder = unixSocketPath, !folder.hasSuffix(".s.PGSQL.\(port)") {
                unixSocketPath = (folder.hasSuffix("/") ? folder : folder + "/") + ".s.PGSQL.\(port)"
            }
            try validate()
        }

        /// Refuses a configuration that cannot work, with the reason.
        func validate() throws {
            guard Self.isValidSchemaName(schema) else {
                throw BackgroundSyncError(
                    .invalidRequest,
                    "invalid PostgreSQL schema name '\(schema)': use lower-case letters, digits and _, not starting with a digit, at most 56 characters")
            }
            guard maximumConnections >= 1 else {
                throw BackgroundSyncError(.invalidRequest, "maximumConnections must be at least 1")
            }
            guard sessionCheckInterval >= .seconds(1) else {
                throw BackgroundSyncError(.invalidRequest, "sessionCheckInterval must be at least 1 second")
            }
        }

        /// Whether `name` can be a schema name written into SQL without quoting issues: the
        /// schema is the one name the store's SQL does not bind as a parameter (PostgreSQL binds
        /// values, not identifiers).
        static func isValidSchemaName(_ name: String) -> Bool {
            guard let first = name.utf8.first, name.utf8.count <= 56, !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first)
            else { return false }
            return name.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                    || byte == UInt8(ascii: "_")
            }
        }

        /// The URL with any password replaced by `***`, for messages: what lies between the first
        /// `:` after the scheme and the last `@` (a password may hold `/`, `?` or `#` unencoded),
        /// and the value of every query parameter but the known ones that hold no secret (`sslmode`,
        /// `schema`, `user`, `dbname`, `host`, `max_connections`, `connect_timeout`,
        /// `application_name`, `target_session_attrs`), wherever a `?`, `&` or `#` starts it, so
        /// that a misspelt `password` is hidden too. Text that is not in the `scheme://` form shows
        /// only its scheme, if it starts with one.
        public static func redacting(_ url: String) -> String {
            guard let schemeEnd = url.range(of: "://") else {
                let scheme = url.prefix { $0 != ":" }
                return URLScheme.isValid(scheme) && scheme.count < url.count ? scheme + ":***" : "***"
            }
            var text = url
            if let at = text[schemeEnd.upperBound...].lastIndex(of: "@"),
                let colon = text[schemeEnd.upperBound..<at].firstIndex(of: ":")
            {
                text.replaceSubrange(text.index(after: colon)..<at, with: "***")
            }
            // Every `name=value` that follows a `?`, `&` or `#`, wherever it is (a query may hold an
            // `@`, which the step above may have taken for the end of a password).
            var shown = ""
            var rest = text[...]
            while let separator = rest.firstIndex(where: { "?&#".contains($0) }) {
                shown += rest[...separator]
                rest = rest[rest.index(after: separator)...]
                let end = rest.firstIndex(where: { "&#".contains($0) }) ?? rest.endIndex
                let item = rest[..<end]
                if let equals = item.firstIndex(of: "="), !Self.plainParameters.contains(item[..<equals].lowercased()) {
                    shown += item[..<equals] + "=***"
                } else {
                    shown += item
                }
                rest = rest[end...]
            }
            return shown + rest
        }

        /// The URL parameters whose values are shown in messages.
        private static let plainParameters: Set<String> = [
            "sslmode", "schema", "user", "dbname", "host", "max_connections", "connect_timeout", "application_name",
            "target_session_attrs",
        ]

        /// Where the store is, without credentials: the store's identity and the name in messages.
        var location: String {
            let server = unixSocketPath ?? "\(host):\(port)"
            return "postgres://\(server)/\(database ?? username)?schema=\(schema)"
        }

        /// The pool's configuration.
        func clientConfiguration() throws -> PostgresClient.Configuration {
            var configuration: PostgresClient.Configuration
            if let unixSocketPath {
                configuration = .init(unixSocketPath: unixSocketPath, username: username, password: password, database: database)
            } else {
                let tls: PostgresClient.Configuration.TLS
                switch self.tls {
                case .disable: tls = .disable
                case .prefer: tls = .prefer(Self.tlsConfiguration(.prefer))
                case .require, .verifyCA, .verifyFull: tls = .require(Self.tlsConfiguration(self.tls))
                }
                configuration = .init(host: host, port: port, username: username, password: password, database: database, tls: tls)
            }
            configuration.options.maximumConnections = maximumConnections
            configuration.options.connectTimeout = connectTimeout
            // PostgresNIO's pool arms a connection's keep-alive timer (and, past its minimum
            // connections, its idle timer) each time the connection comes back, each timer a task
            // of its own started by the pool's task: for a statement as short as a push, that
            // costs the client more than the statement. So the pool keeps one connection open
            // (PostgresNIO wants fewer than the maximum), which it lends first whenever it is
            // free, and the store checks it itself when it idles (`keepPoolAlive()`); the others
            // close once unused for a check's interval, before a NAT or a load balancer that ends
            // idle flows would drop them.
            configuration.options.minimumConnections = maximumConnections > 1 ? 1 : 0
            configuration.options.keepAliveBehavior = nil
            configuration.options.connectionIdleTimeout = min(.seconds(60), sessionCheckInterval)
            // The store's prepared statements name its tables without the schema; their plans are
            // made once per connection.
            configuration.options.additionalStartupParameters = [
                ("search_path", schema), ("plan_cache_mode", "force_generic_plan"),
            ]
            return configuration
        }

        /// The configuration of the session connection (the session lock and `LISTEN`).
        func connectionConfiguration() throws -> PostgresConnection.Configuration {
            var configuration: PostgresConnection.Configuration
            if let unixSocketPath {
                configuration = .init(unixSocketPath: unixSocketPath, username: username, password: password, database: database)
            } else {
                let tls: PostgresConnection.Configuration.TLS
                switch self.tls {
                case .disable: tls = .disable
                case .prefer: tls = .prefer(try NIOSSLContext(configuration: Self.tlsConfiguration(.prefer)))
                case .require, .verifyCA, .verifyFull:
                    tls = .require(try NIOSSLContext(configuration: Self.tlsConfiguration(self.tls)))
                }
                configuration = .init(host: host, port: port, username: username, password: password, database: database, tls: tls)
            }
            configuration.options.connectTimeout = .nanoseconds(
                connectTimeout.components.seconds * 1_000_000_000 + connectTimeout.components.attoseconds / 1_000_000_000)
            return configuration
        }

        private static func tlsConfiguration(_ mode: TLSMode) -> TLSConfiguration {
            var configuration = TLSConfiguration.makeClientConfiguration()
            switch mode {
            case .disable, .prefer, .require: configuration.certificateVerification = .none
            case .verifyCA: configuration.certificateVerification = .noHostnameVerification
            case .verifyFull: configuration.certificateVerification = .fullVerification
            }
            return configuration
        }
    }
}

extension Optional {
    /// The value, or `error` thrown.
    func orThrow(_ error: @autoclosure () -> some Error) throws -> Wrapped {
        guard let self else { throw error() }
        return self
    }
}

extension PostgresQueueDatabase.Configuration: CustomStringConvertible, CustomReflectable {
    /// Where the store is and who logs in, without the password.
    public var description: String {
        "PostgresQueueDatabase.Configuration(\(location), user \(username)\(password == nil ? "" : ", password ***"))"
    }

    /// The fields, with the password shown as `***` (for `dump` and debuggers).
    public var customMirror: Mirror {
        Mirror(self, children: [
            "host": host, "port": port, "unixSocketPath": unixSocketPath as Any, "username": username,
            "password": (password == nil ? nil : "***") as Any, "database": database as Any, "tls": tls,
            "schema": schema, "maximumConnections": maximumConnections, "connectTimeout": connectTimeout,
            "sessionCheckInterval": sessionCheckInterval,
        ])
    }
}
