import BackgroundSync
import BackgroundSyncTesting
import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("Queue")
struct QueueTests {
    let url = URL(string: "https://example.com/api/posts")!

    private func bodies(_ entries: [QueueEntry]) -> [String] {
        entries.map { String(decoding: $0.request.httpBody ?? Data(), as: UTF8.self) }
    }

    @Test func pushAndUnshiftKeepOrderAndMetadata() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let queue = try Queue(name: uniqueQueueName(), database: database)
        let stamp = Date(timeIntervalSinceNow: -60)
        try await queue.pushRequest(QueueEntry(request: postRequest(url, body: "2"), timestamp: stamp, metadata: ["id": "2"]))
        try await queue.pushRequest(postRequest(url, body: "3"))
        try await queue.unshiftRequest(QueueEntry(request: postRequest(url, body: "1")))

        let all = try await queue.getAll()
        #expect(bodies(all) == ["1", "2", "3"])
        #expect(all[1].metadata == ["id": "2"])
        #expect(abs(all[1].timestamp.timeIntervalSince(stamp)) < 0.001)
        #expect(all.allSatisfy { $0.id != nil })
        #expect(try await queue.size() == 3)
    }

    @Test func shiftAndPopReturnAndRemove() async throws {
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        for body in ["a", "b", "c"] { try await queue.pushRequest(postRequest(url, body: body)) }
        #expect(bodies([try #require(try await queue.shiftRequest())]) == ["a"])
        #expect(bodies([try #require(try await queue.popRequest())]) == ["c"])
        #expect(try await queue.size() == 1)
        _ = try await queue.popRequest()
        #expect(try await queue.shiftRequest() == nil)
        #expect(try await queue.popRequest() == nil)
    }

    @Test func expiredEntriesAreSkippedAndDeletedButCountedBySize() async throws {
        let options = QueueOptions(maxRetentionTime: .seconds(60 * 60))
        let queue = try Queue(name: uniqueQueueName(), options: options, database: try SQLiteQueueDatabase.temporary())
        let old = Date(timeIntervalSinceNow: -2 * 60 * 60)
        try await queue.pushRequest(QueueEntry(request: postRequest(url, body: "old1"), timestamp: old))
        try await queue.pushRequest(QueueEntry(request: postRequest(url, body: "fresh")))
        try await queue.pushRequest(QueueEntry(request: postRequest(url, body: "old2"), timestamp: old))

        #expect(try await queue.size() == 3)
        #expect(bodies(try await queue.getAll()) == ["fresh"])
        #expect(try await queue.size() == 1)

        try await queue.unshiftRequest(QueueEntry(request: postRequest(url, body: "old3"), timestamp: old))
        #expect(bodies([try #require(try await queue.shiftRequest())]) == ["fresh"])
        try await queue.pushRequest(QueueEntry(request: postRequest(url, body: "old4"), timestamp: old))
        #expect(try await queue.popRequest() == nil)
        #expect(try await queue.size() == 0)
    }

    /// Half a lease shorter than a lease's commit would lease and give back forever.
    @Test func aLeaseUnderOneSecondIsRefused() throws {
        let database = try SQLiteQueueDatabase.temporary()
        let error = #expect(throws: BackgroundSyncError.self) {
            try Queue(name: uniqueQueueName(), options: QueueOptions(leaseDuration: .milliseconds(200)), database: database)
        }
        #expect(error?.code == .invalidRequest)
        #expect(error?.message.contains("leaseDuration must be at least 1 second") == true)
        _ = try Queue(name: uniqueQueueName(), options: QueueOptions(leaseDuration: .seconds(1)), database: database)
    }

    @Test func defaultRetentionIsSevenDays() {
        #expect(QueueOptions().maxRetentionTime == .seconds(10080 * 60))
    }

    @Test func duplicateLiveNamesAreRefusedAndFreedOnRelease() async throws {
        let database = try SQLiteQueueDatabase.temporary()
        let name = uniqueQueueName()
        var first: Queue? = try Queue(name: name, database: database)
        let error = try #require(throws: BackgroundSyncError.self) {
            _ = try Queue(name: name, database: database)
        }
        #expect(error.code == .duplicateQueueName)
        #expect(error.description.contains(name))
        // Another database may use the name.
        _ = try Queue(name: name, database: try SQLiteQueueDatabase.temporary())
        #expect(first?.name == name)
        first = nil
        let second = try Queue(name: name, database: database)
        #expect(second.syncTag == "background-sync:\(name)")
    }

    @Test func invalidRequestsAreRefusedAndNothingIsStored() async throws {
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        let error = try await #require(throws: BackgroundSyncError.self) {
            try await queue.pushRequest(URLRequest(url: URL(string: "ftp://example.com/x")!))
        }
        #expect(error.code == .invalidRequest)
        #expect(try await queue.size() == 0)
        #expect(throws: BackgroundSyncError.self) { try Queue(name: "", database: try SQLiteQueueDatabase.temporary()) }
    }

    @Test func idempotencyKeyIsAddedToPostAndPatchOnly() async throws {
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(url, body: "p"))
        var patch = URLRequest(url: url)
        patch.httpMethod = "PATCH"
        try await queue.pushRequest(patch)
        var put = URLRequest(url: url)
        put.httpMethod = "PUT"
        try await queue.pushRequest(put)
        try await queue.pushRequest(postRequest(url, body: "own", headers: ["Idempotency-Key": "mine"]))

        let keys = try await queue.getAll().map { $0.request.value(forHTTPHeaderField: "Idempotency-Key") }
        for key in keys[0...1] {
            // A random (version 4, RFC 4122 variant) UUID in lower case.
            let parsed = try #require(key.flatMap(UUID.init(uuidString:)))
            #expect(key == parsed.uuidString.lowercased())
            #expect(parsed.uuid.6 >> 4 == 4)
            #expect(parsed.uuid.8 >> 6 == 0b10)
        }
        #expect(keys[0] != keys[1])
        #expect(keys[2] == nil)
        #expect(keys[3] == "mine")

        let noKeys = try Queue(
            name: uniqueQueueName(), options: QueueOptions(addsIdempotencyKey: false),
            database: try SQLiteQueueDatabase.temporary())
        try await noKeys.pushRequest(postRequest(url, body: "p"))
        #expect(try await noKeys.getAll()[0].request.value(forHTTPHeaderField: "Idempotency-Key") == nil)
    }
}
