import BackgroundSync
import BackgroundSyncTesting
import Crypto
import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("Replay hooks and secret headers")
struct HooksAndSecretsTests {
    /// Every byte SQLite wrote for this database (main file and WAL).
    private func diskBytes(_ database: SQLiteQueueDatabase) throws -> Data {
        var bytes = Data()
        for suffix in ["", "-wal"] {
            if let data = FileManager.default.contents(atPath: database.path + suffix) { bytes.append(data) }
        }
        return bytes
    }

    @Test func requestWillReplayChangesTheRequestAndRequestDidReplayGetsTheResponse() async throws {
        let server = try RecordingServer()
        server.respond { request, index in
            .respond(.text(#"{"id":\#(index + 100)}"#, status: 201, headers: ["X-Served-By": "loopback"]))
        }
        let responses = Box<[(Int64, ServerResponse)]>([])
        let options = QueueOptions(
            requestWillReplay: { request, entry in
                var request = request
                request.setValue("replay-\(entry.id)", forHTTPHeaderField: "X-Replay")
                return request
            },
            requestDidReplay: { entry, response in responses.withLock { $0.append((entry.id, response)) } })
        let queue = try Queue(name: uniqueQueueName(), options: options, database: try SQLiteQueueDatabase.temporary())
        let first = try await queue.pushRequest(postRequest(server.url, body: "a"))
        let second = try await queue.pushRequest(postRequest(server.url, body: "b"))
        try await queue.replayRequests()

        #expect(server.received.current.map { $0.headers["x-replay"] } == ["replay-\(first)", "replay-\(second)"])
        let got = responses.current
        #expect(got.map(\.0) == [first, second])
        #expect(got.map { String(decoding: $0.1.body, as: UTF8.self) } == [#"{"id":100}"#, #"{"id":101}"#])
        #expect(got.allSatisfy { $0.1.status == 201 && $0.1.headers["x-served-by"] == "loopback" })
    }

    @Test func aFailingRequestWillReplayKeepsTheEntry() async throws {
        let server = try RecordingServer()
        struct NoToken: Error {}
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(requestWillReplay: { _, _ in throw NoToken() }),
            database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "a"))
        let error = try await #require(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        #expect(error.underlying is NoToken)
        #expect(server.bodies.isEmpty)
        #expect(try await queue.size() == 1)
    }

    @Test func secretHeadersAreNotStoredByDefaultAndTheHookAddsThemBack() async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        let queue = try Queue(
            name: uniqueQueueName(),
            options: QueueOptions(requestWillReplay: { request, _ in
                var request = request
                request.setValue("Bearer fresh-token", forHTTPHeaderField: "Authorization")
                return request
            }),
            database: database)
        try await queue.pushRequest(postRequest(
            server.url, body: "a",
            headers: ["Authorization": "Bearer s3cr3t-old-token", "Cookie": "session=s3cr3t-cookie", "X-Other": "kept"]))

        let disk = try diskBytes(database)
        #expect(disk.range(of: Data("s3cr3t".utf8)) == nil, "no secret reached the disk")
        #expect(disk.range(of: Data("X-Other".lowercased().utf8)) != nil)
        try await queue.replayRequests()
        let sent = try #require(server.received.current.first)
        #expect(sent.headers["authorization"] == "Bearer fresh-token")
        #expect(sent.headers["cookie"] == nil)
        #expect(sent.headers["x-other"] == "kept")
    }

    @Test func plainStorageKeepsSecretsAsTheyAre() async throws {
        let server = try RecordingServer()
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(secretHeaders: .plain),
            database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "a", headers: ["Authorization": "Bearer plain"]))
        try await queue.replayRequests()
        #expect(server.received.current.first?.headers["authorization"] == "Bearer plain")
    }

    @Test func encryptedSecretsAreSealedOnDiskAndSentOnReplay() async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        let key = SymmetricKey(size: .bits256)
        let name = uniqueQueueName()
        do {
            let queue = try Queue(name: name, options: QueueOptions(secretHeaders: .encrypted(key)), database: database)
            try await queue.pushRequest(postRequest(server.url, body: "a", headers: ["Authorization": "Bearer s3cr3t-sealed"]))
        }
        #expect(try diskBytes(database).range(of: Data("s3cr3t".utf8)) == nil)
        let stored = try #require(try await database.entries(queueName: name, state: .pending).first)
        #expect(stored.sealedSecrets != nil)
        #expect(stored.requestData.headers["authorization"] == nil)

        let queue = try Queue(name: name, options: QueueOptions(secretHeaders: .encrypted(key)), database: database)
        try await queue.replayRequests()
        #expect(server.received.current.first?.headers["authorization"] == "Bearer s3cr3t-sealed")
    }

    /// The URLs a replay sends, through URLSession to the real server.
    private struct URLRecordingTransport: HTTPTransport {
        let urls = Box<[String]>([])
        func send(_ request: URLRequest) async throws -> ServerResponse {
            urls.withLock { $0.append(request.url?.absoluteString ?? "") }
            return try await URLSessionTransport().send(request)
        }
    }

    @Test(arguments: ["strip", "encrypted", "plain"])
    func credentialsInTheURLAreSecretsToo(storage: String) async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        let port = try #require(server.url.port)
        let plainURL = "http://127.0.0.1:\(port)/api/posts?q=a%20b&r=%C3%A9"
        let withCredentials = "http://user:s3cr3t-pw@127.0.0.1:\(port)/api/posts?q=a%20b&r=%C3%A9"
        let key = SymmetricKey(size: .bits256)
        let secrets: SecretHeaderStorage = switch storage {
        case "strip": .strip
        case "encrypted": .encrypted(key)
        default: .plain
        }
        let transport = URLRecordingTransport()
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(secretHeaders: secrets), database: database, transport: transport)
        try await queue.pushRequest(postRequest(try #require(URL(string: withCredentials)), body: "a"))

        let stored = try #require(try await database.entries(queueName: queue.name, state: .pending).first)
        let onDisk = try diskBytes(database).range(of: Data("s3cr3t".utf8)) != nil
        #expect(onDisk == (storage == "plain"))
        // The rest of the URL is kept byte for byte.
        #expect(stored.requestData.url == (storage == "plain" ? withCredentials : plainURL))
        #expect((stored.sealedSecrets != nil) == (storage == "encrypted"))

        try await queue.replayRequests()
        #expect(transport.urls.current == [storage == "strip" ? plainURL : withCredentials])
        #expect(server.received.current.first?.target == "/api/posts?q=a%20b&r=%C3%A9")
    }

    @Test func secretsSealedWithAnotherKeyAreDeadLetteredNotSentWithout() async throws {
        let server = try RecordingServer()
        let database = try SQLiteQueueDatabase.temporary()
        let name = uniqueQueueName()
        do {
            let queue = try Queue(
                name: name, options: QueueOptions(secretHeaders: .encrypted(SymmetricKey(size: .bits256))), database: database)
            try await queue.pushRequest(postRequest(server.url, body: "a", headers: ["Authorization": "Bearer x"]))
        }
        let queue = try Queue(
            name: name, options: QueueOptions(secretHeaders: .encrypted(SymmetricKey(size: .bits256))), database: database)
        let summary = try await queue.replayRequests()
        #expect(summary.deadLettered == 1)
        #expect(server.bodies.isEmpty)
        let dead = try await queue.deadLetters()
        #expect(dead.first?.lastFailure?.message.contains("cannot rebuild the request") == true)
        #expect(dead.first?.sealedSecrets != nil, "kept, so it can be requeued with the right key")
    }

    @Test func onAuthenticationRequiredCanRefreshAndResend() async throws {
        let server = try RecordingServer()
        server.respond { request, _ in
            request.headers["authorization"] == "Bearer good" ? .respond(.text("ok")) : .respond(.text("expired", status: 401))
        }
        let token = Box("Bearer expired")
        let options = QueueOptions(
            requestWillReplay: { request, _ in
                var request = request
                request.setValue(token.current, forHTTPHeaderField: "Authorization")
                return request
            },
            onAuthenticationRequired: { _, response in
                #expect(response.status == 401)
                token.withLock { $0 = "Bearer good" }
                return true
            })
        let queue = try Queue(name: uniqueQueueName(), options: options, database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "a"))
        #expect(try await queue.replayRequests().delivered == 1)
        #expect(server.received.current.map { $0.headers["authorization"] } == ["Bearer expired", "Bearer good"])
    }

    @Test func aPausedQueueResumesAndDeliversEverything() async throws {
        let server = try RecordingServer()
        let allowed = Box(false)
        server.respond { _, _ in allowed.current ? .respond(.text("ok")) : .respond(.text("login", status: 401)) }
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "a"))
        try await queue.pushRequest(postRequest(server.url, body: "b"))
        await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        #expect(await queue.isPaused)
        #expect(try await queue.size() == 2, "nothing is dropped")
        allowed.withLock { $0 = true }
        await queue.resume()
        #expect(!(await queue.isPaused))
        #expect(try await queue.replayRequests().delivered == 2)
    }
}
