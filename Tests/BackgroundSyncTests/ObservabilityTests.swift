import BackgroundSync
import BackgroundSyncTesting
import Foundation
import Logging
import MetricsTestKit
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A log handler that keeps what it is given.
struct CapturingLogHandler: LogHandler {
    let lines: Box<[(Logger.Level, String)]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        lines.withLock { $0.append((event.level, event.message.description)) }
    }
}

@Suite("Metrics and logs")
struct ObservabilityTests {
    @Test func countersAndTheSizeGaugeFollowTheQueue() async throws {
        let metrics = TestMetrics()
        let server = try RecordingServer()
        server.respond { request, index in
            switch String(decoding: request.body, as: UTF8.self) {
            case "bad": .respond(.text("", status: 400))
            case "later" where index == 2: .respond(.text("", status: 503))
            default: .respond(.text("ok"))
            }
        }
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(metricsFactory: metrics),
            database: try SQLiteQueueDatabase.temporary())
        for body in ["ok", "bad", "later"] { try await queue.pushRequest(postRequest(server.url, body: body)) }
        await #expect(throws: BackgroundSyncError.self) { try await queue.replayRequests() }
        try await queue.replayRequests()

        let dimensions = [("queue", queue.name)]
        #expect(metrics.counterTotal(label: "background_sync_enqueued_total", dimensions: dimensions) == 3)
        #expect(metrics.counterTotal(label: "background_sync_replayed_total", dimensions: dimensions) == 2)
        #expect(metrics.counterTotal(label: "background_sync_retried_total", dimensions: dimensions) == 1)
        #expect(metrics.counterTotal(label: "background_sync_dead_lettered_total", dimensions: dimensions) == 1)
        let gauge = try metrics.expectGauge("background_sync_queue_size", dimensions)
        #expect(gauge.lastValue == 0)
        #expect(gauge.values.max() == 3)
    }

    /// An ordered replay deletes delivered entries a few at a time; the size a push reports while
    /// it runs (the event's and the gauge's) leaves them out.
    @Test func theSizeReportedOnEnqueueDuringAnOrderedReplayLeavesOutDeliveredEntries() async throws {
        let metrics = TestMetrics()
        let server = try RecordingServer()
        let queueBox = Box<Queue?>(nil)
        let options = QueueOptions(
            requestDidReplay: { entry, _ in
                // After the 3rd of 5 entries: 2 left, plus the one pushed now.
                if String(decoding: entry.requestData.body ?? Data(), as: UTF8.self) == "e2" {
                    _ = try? await queueBox.current?.pushRequest(postRequest(server.url, body: "late"))
                }
            },
            metricsFactory: metrics)
        let queue = try Queue(name: uniqueQueueName(), options: options, database: try SQLiteQueueDatabase.temporary())
        queueBox.withLock { $0 = queue }
        defer { queueBox.withLock { $0 = nil } }
        for index in 0..<5 { try await queue.pushRequest(postRequest(server.url, body: "e\(index)")) }
        let events = queue.events()
        #expect(try await queue.replayRequests().delivered == 6)
        let enqueued = await firstEvent(events) { if case .enqueued = $0.kind { true } else { false } }
        #expect(enqueued?.size == 3, "2 left and the new one; the 3 delivered are not counted")
        let gauge = try metrics.expectGauge("background_sync_queue_size", [("queue", queue.name)])
        #expect(gauge.values == [1, 2, 3, 4, 5, 3, 0])
    }

    @Test func strippingSecretsWithoutAHookWarnsOnce() async throws {
        let lines = Box<[(Logger.Level, String)]>([])
        let logger = Logger(label: "test") { _ in CapturingLogHandler(lines: lines) }
        let queue = try Queue(
            name: uniqueQueueName(), options: QueueOptions(logger: logger), database: try SQLiteQueueDatabase.temporary())
        let url = URL(string: "https://example.com/x")!
        for _ in 0..<3 {
            try await queue.pushRequest(postRequest(url, body: "a", headers: ["Authorization": "Bearer t"]))
        }
        let warnings = lines.current.filter { $0.0 == .warning }
        #expect(warnings.count == 1)
        #expect(warnings.first?.1.contains("requestWillReplay") == true)
        #expect(lines.current.allSatisfy { $0.0 <= .warning })
    }
}

@Suite("Queue sizes for a badge", .timeLimit(.minutes(1)))
struct QueueSizesTests {
    @Test func theStreamStartsWithTheCurrentSizeAndFollowsChanges() async throws {
        let server = try RecordingServer()
        let queue = try Queue(name: uniqueQueueName(), database: try SQLiteQueueDatabase.temporary())
        try await queue.pushRequest(postRequest(server.url, body: "before"))
        var sizes = queue.sizes().makeAsyncIterator()
        #expect(await sizes.next() == 1)
        try await queue.pushRequest(postRequest(server.url, body: "after"))
        #expect(await sizes.next() == 2)
        try await queue.replayRequests()
        // The replay's events may come after both deliveries: the count goes down to 0, through 1 or not.
        var after: [Int] = []
        while let size = await sizes.next() {
            after.append(size)
            if size == 0 { break }
        }
        #expect(after == [1, 0] || after == [0])
    }
}
