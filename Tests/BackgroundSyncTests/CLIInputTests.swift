import BackgroundSync
import ChildProcesses
import Foundation
import Testing

/// Hostile input to `bgsync`: refused in one line with status 2, never altered, never dropped, and
/// a refusal leaves the database file's bytes as they were.
@Suite("bgsync refuses bad input as given", .timeLimit(.minutes(2)))
struct CLIInputTests {
    let folder: URL
    let db: String

    init() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-input-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        db = folder.appendingPathComponent("queue.sqlite").path
    }

    private func run(_ arguments: [String]) async throws -> CLIRun {
        try await bgsync(arguments + ["--db", db])
    }

    /// A refusal: status 2, exactly one line on stderr naming the problem, nothing on stdout.
    private func expectRefused(_ run: CLIRun, mentioning text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(run.status == 2, "\(run.stderr)", sourceLocation: sourceLocation)
        #expect(run.stdout.isEmpty, sourceLocation: sourceLocation)
        #expect(run.stderr.hasPrefix("bgsync: "), sourceLocation: sourceLocation)
        #expect(run.stderr.filter { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }.count == 1, "\(run.stderr.debugDescription)",
                sourceLocation: sourceLocation)
        #expect(run.stderr.contains(text), "\(run.stderr)", sourceLocation: sourceLocation)
    }

    @Test func headerFieldsWithControlCharactersAreRefused() async throws {
        let url = "https://api.example.com/posts"
        // A CR LF in a value would smuggle a second header field; a lone CR, another control
        // character or a bad name is just as wrong. Each is refused, even next to a good field.
        let split = try await run(["enqueue", url, "-H", "X-A: b\r\nX-Evil: 1", "-H", "X-B: c", "-d", "x"])
        expectRefused(split, mentioning: "header 'X-A' holds a control character (0x0D)")
        expectRefused(try await run(["enqueue", url, "-H", "X-A: b\r", "-d", "x"]), mentioning: "(0x0D)")
        expectRefused(try await run(["enqueue", url, "-H", "X-A: b\u{01}c", "-d", "x"]), mentioning: "(0x01)")
        expectRefused(try await run(["enqueue", url, "-H", "X A: b", "-d", "x"]), mentioning: "header name 'X A' is not a token")
        expectRefused(try await run(["send", url, "-H", "X-A: b\nc", "-d", "x"]), mentioning: "(0x0A)")
        // The echoed method keeps to one line: its CR LF is written as escapes.
        let method = try await run(["enqueue", url, "-X", "POST\r\nX-Evil: 1", "-d", "x"])
        expectRefused(method, mentioning: #"'POST\r\nX-EVIL: 1' is not an HTTP method"#)
        #expect(!FileManager.default.fileExists(atPath: db), "a refused request created the database")

        // A tab inside a value is allowed; spaces and tabs around it are HTTP's optional whitespace.
        let fine = try await run(["enqueue", url, "-H", "X-A: \t b\tc \t", "-H", "x-a: d", "-d", "x"])
        #expect(fine.status == 0, "\(fine.stderr)")
        let show = try await run(["show", "1", "--json"])
        #expect(show.stdout.contains(#""x-a" : "b\tc, d""#), "\(show.stdout)")
    }

    @Test func credentialsInTheURLAreNotStoredAndTheCommandSaysSo() async throws {
        let run = try await run(["enqueue", "https://user:s3cr3t@api.example.com/posts?x=1", "-d", "x"])
        #expect(run.status == 0)
        #expect(run.stderr == "bgsync: warning: secret headers and URL credentials are not stored; pass --store-secrets to keep them\n")
        let show = try await self.run(["show", "1"])
        #expect(show.stdout.contains("POST https://api.example.com/posts?x=1"), "\(show.stdout)")
        for suffix in ["", "-wal"] {
            let bytes = FileManager.default.contents(atPath: db + suffix) ?? Data()
            #expect(bytes.range(of: Data("s3cr3t".utf8)) == nil)
        }
    }

    @Test func storedCredentialsAreMaskedWhenShown() async throws {
        let run = try await run([
            "enqueue", "--store-secrets", "https://user:s3cr3t@api.example.com/posts", "-H", "Authorization: Bearer t0ken", "-d", "x",
        ])
        #expect(run.status == 0)
        for arguments in [["show", "1"], ["show", "1", "--json"], ["list", "--queue", "default"]] {
            let shown = try await self.run(arguments)
            #expect(shown.stdout.contains("https://user:(masked)@api.example.com/posts"), "\(arguments): \(shown.stdout)")
            #expect(!shown.stdout.contains("s3cr3t") && !shown.stdout.contains("t0ken"), "\(arguments): \(shown.stdout)")
        }
    }

    @Test func usageErrorsEscapeTheControlCharactersTheyEcho() async throws {
        let run = try await run(["list", "--x\r\nInjected: y"])
        #expect(run.status == 64)
        #expect(run.stderr.hasPrefix(#"Error: Unknown option '--x\r\nInjected: y'"#), "\(run.stderr)")
        #expect(!run.stderr.split(separator: "\n").contains { $0.hasPrefix("Injected") })
    }

    @Test func argumentsThatAreNotUTF8AreRefused() async throws {
        // A Swift string is passed as UTF-8; a shell passes the raw bytes.
        let bgsyncPath = builtProductURL("bgsync").path
        for (argument, index) in [(#"-d "$(printf 'abc\377\376')""#, 4), (#"--queue "$(printf 'q\377')" -d x"#, 4)] {
            let run = try ChildProcess.run(
                "/bin/sh",
                ["-c", #"exec "$0" enqueue https://api.example.com/posts "# + argument + #" --db "$1""#, bgsyncPath, db])
            let stderr = String(decoding: run.stderr, as: UTF8.self)
            #expect(run.status == 2, "\(stderr)")
            #expect(stderr.contains("argument \(index) ("), "\(stderr)")
            #expect(stderr.contains("is not valid UTF-8; give a binary body with --data-file"), "\(stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: db))
    }

    /// The bytes of the database and of its WAL (none when there is no WAL: a read-only opening
    /// by the owner may leave an empty one).
    private func snapshot() throws -> [Data] {
        try ["", "-wal"].map { suffix in
            FileManager.default.fileExists(atPath: db + suffix) ? try Data(contentsOf: URL(fileURLWithPath: db + suffix)) : Data()
        }
    }

    /// A `--db` or `$BGSYNC_DB` value that is neither a path nor a `postgres://` URL (a mistyped
    /// URL, a libpq key=value string) would name a SQLite file: it is refused, without repeating
    /// its password, and no file is created in the working folder.
    @Test func aDatabaseValueThatIsNeitherAPathNorAPostgresURLIsRefused() async throws {
        let values: [(String, String)] = [
            ("postgres:/u:s3cret@h/db", "must start with postgres:// or postgresql://"),
            ("postgresql:u:s3cret@h", "must start with postgres:// or postgresql://"),
            ("mysql://u:s3cret@h/db", "must start with postgres:// or postgresql://"),
            ("\"postgres://u:s3cret@h/db\"", "no quotes or spaces around it"),
            (" postgres://u:s3cret@h/db", "no quotes or spaces around it"),
            ("sqlite:s3cret.db", "not a sqlite: URL"),
            ("host=db password=s3cret dbname=app", "not a key=value connection string"),
        ]
        let workingFolder = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        for (value, message) in values {
            for run in [
                try await bgsync(["enqueue", "https://api.example.com/x", "-d", "x", "--db", value]),
                try await bgsync(["queues"], environment: ["BGSYNC_DB": value]),
            ] {
                expectRefused(run, mentioning: message)
                #expect(!run.stderr.contains("s3cret"), "\(run.stderr)")
            }
        }
        for (value, _) in values {
            let first = value.split(separator: "/").first.map(String.init) ?? value
            #expect(!FileManager.default.fileExists(atPath: workingFolder.appendingPathComponent(first).path), "created '\(first)'")
        }
        // A file whose name has a colon is still a file, written as a path.
        let colon = folder.appendingPathComponent("a:b.sqlite").path
        #expect(try await bgsync(["enqueue", "http://127.0.0.1:9/x", "-d", "x", "--db", colon]).status == 0)
    }

    @Test func refusingLeavesTheFileAsItWas() async throws {
        for body in ["one", "two"] {
            #expect(try await run(["enqueue", "http://127.0.0.1:9/posts", "--queue", "posts", "-d", body]).status == 0)
        }
        #expect(try await run(["set-aside", "2"]).status == 0)
        let before = try snapshot()
        let refusals: [([String], String)] = [
            (["enqueue", "https://api.example.com/x", "--queue", "", "-d", "x"], "a queue name cannot be empty"),
            (["replay", "--queue", ""], "no queue named ''"),
            (["replay", "--queue", "nosuch"], "no queue named 'nosuch'"),
            (["purge", "--queue", "nosuch", "--yes"], "no queue named 'nosuch'"),
            (["requeue", "999"], "no entry with id 999"),
            (["requeue", "1"], "entry 1 is not a dead letter"),
            (["requeue", "--all-dead", "--queue", "nosuch"], "no queue named 'nosuch'"),
            (["sync", "--tag", ""], "no queue handles the sync tag ''"),
            (["sync", "--tag", "background-sync:nosuch"], "no queue handles the sync tag"),
            (["delete", "999", "--yes"], "no entry with id 999"),
            (["set-aside", "999"], "no entry with id 999"),
            (["set-aside", "2"], "entry 2 is already a dead letter"),
        ]
        for (arguments, message) in refusals {
            expectRefused(try await run(arguments), mentioning: message)
            #expect(try snapshot() == before, "\(arguments) changed the database file")
        }
        // Nothing to do writes nothing either.
        #expect(try await run(["purge", "--dead", "--queue", "posts", "--yes"]).stdout == "deleted 1 dead letters\n")
        let drained = try snapshot()
        #expect(try await run(["purge", "--dead", "--queue", "posts", "--yes"]).stdout == "nothing to delete\n")
        #expect(try snapshot() == drained)
    }
}
