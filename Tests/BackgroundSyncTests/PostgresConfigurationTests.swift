import BackgroundSync
import BackgroundSyncPostgres
import Foundation
import Testing

/// Reading `postgres://` URLs, without a server.
@Suite("PostgreSQL configuration")
struct PostgresConfigurationTests {
    typealias Configuration = PostgresQueueDatabase.Configuration

    @Test func aURLGivesEveryField() throws {
        let configuration = try Configuration(
            url: "postgresql://app%40ops:p%2Fss@db.internal:6432/queues?sslmode=require&schema=fleet_a&max_connections=8&connect_timeout=2.5")
        #expect(configuration.username == "app@ops")
        #expect(configuration.password == "p/ss")
        #expect(configuration.host == "db.internal")
        #expect(configuration.port == 6432)
        #expect(configuration.database == "queues")
        #expect(configuration.tls == .require)
        #expect(configuration.schema == "fleet_a")
        #expect(configuration.maximumConnections == 8)
        #expect(configuration.connectTimeout == .milliseconds(2500))
        let socket = try Configuration(url: "postgres:///app?host=/run/postgresql&user=worker&password=pw")
        #expect(socket.unixSocketPath == "/run/postgresql/.s.PGSQL.5432")
        #expect(socket.username == "worker")
        #expect(socket.password == "pw")
    }

    @Test(arguments: [
        ("mysql://u@h/db", "the scheme must be postgres:// or postgresql://"),
        ("postgres://u@h:70000/db", "port 70000 is out of range"),
        ("postgres://u@h/db/extra", "the path must be one database name"),
        ("postgres://u@h/db?sslmode=sometimes", "unknown sslmode 'sometimes'"),
        ("postgres://u@h/db?schema=Public", "invalid PostgreSQL schema name 'Public'"),
        ("postgres://u@h/db?schema=x;drop", "invalid PostgreSQL schema name 'x;drop'"),
        ("postgres://u@h/db?colour=blue", "unknown parameter 'colour'"),
        ("postgres:/u@h/db", "the URL must start with postgres:// or postgresql://"),
    ])
    func aBadURLIsNamed(_ url: String, _ reason: String) throws {
        let error = #expect(throws: BackgroundSyncError.self) { try Configuration(url: url) }
        #expect(error?.code == .invalidRequest)
        #expect(error?.message.contains(reason) == true, "\(error?.message ?? "")")
    }

    @Test func passwordsNeverShowInMessages() throws {
        #expect(Configuration.redacting("postgres://u:s3cret@h/db") == "postgres://u:***@h/db")
        // Unencoded '/', '?' and '#' in a password, and a password parameter.
        #expect(Configuration.redacting("postgres://u:ab/c?d#e@h/db") == "postgres://u:***@h/db")
        #expect(Configuration.redacting("postgres://h/db?user=u&password=s3cret&sslmode=disable")
            == "postgres://h/db?user=u&password=***&sslmode=disable")
        // A misspelt password parameter, and text not in the scheme:// form.
        #expect(Configuration.redacting("postgres://u@h/db?sslmode=disable&passwd=s3cret")
            == "postgres://u@h/db?sslmode=disable&passwd=***")
        #expect(Configuration.redacting("postgres://u:a?b@h/db?pass=s3cret") == "postgres://u:***@h/db?pass=***")
        #expect(Configuration.redacting("postgres:/u:s3cret@h/db") == "postgres:***")
        // An `@` in the query, a fragment, and key=value text.
        #expect(Configuration.redacting("postgres://h/db?user=admin@srv&password=s3cret&colour=1")
            == "postgres://h/db?user=admin@srv&password=***&colour=***")
        #expect(!Configuration.redacting("postgres://h:5432/db?user=a@b&password=s3cret&sslmode=bogus").contains("s3cret"))
        #expect(Configuration.redacting("postgres://h/db?sslmode=disable#password=s3cret")
            == "postgres://h/db?sslmode=disable#password=***")
        #expect(Configuration.redacting("host=h password=s3cret hostaddr=fe80::1") == "***")
        let configuration = try Configuration(url: "postgres://u:s3cret@h/db")
        #expect(!"\(configuration)".contains("s3cret") && "\(configuration)".contains("user u"))
        var dumped = ""
        dump(configuration, to: &dumped)
        #expect(!dumped.contains("s3cret") && dumped.contains("***"), "\(dumped)")
        for url in [
            "postgres://u:ab/cd@h/db?x=1", "postgres://u:s3cret@h:99999/db", "postgres://h/db?password=s3cret&bad=1",
            "postgres://u@h/db?passwd=s3cret", "postgres:/u:s3cret@h/db",
            "postgres://h/db?user=admin@srv&password=s3cret&colour=1",
        ] {
            let error = #expect(throws: BackgroundSyncError.self) { try Configuration(url: url) }
            #expect(error.map { !$0.description.contains("s3cret") && !$0.description.contains("ab/cd") } == true,
                "\(error?.description ?? "")")
        }
    }
}
