// The Swift blocks of docs/TestingBackgroundSync.md, compiled and run with the tests (see
// ReadmeSnippets.swift).
import BackgroundSync
import BackgroundSyncTesting
import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

// README: begin
@Test func aPostWrittenOfflineIsSentOnceOnlineWithOneKey() async throws {
    let transport = ScriptedTransport()
    transport.script(.fail(URLError(.notConnectedToInternet)), .answer(status: 201))
    let queue = try Queue(name: "posts", database: try SQLiteQueueDatabase.temporary(), transport: transport)

    var request = URLRequest(url: URL(string: "https://api.example.com/posts")!)
    request.httpMethod = "POST"
    request.httpBody = Data(#"{"title":"Hello"}"#.utf8)
    let result = try await queue.send(request)
    #expect(result.queuedEntryID != nil)            // offline: saved, "will sync"

    let summary = try await queue.replayRequests()  // what the sync does once online
    #expect(summary.delivered == 1)
    let keys = transport.requests.map { $0.value(forHTTPHeaderField: "Idempotency-Key") }
    #expect(keys.count == 2 && keys[0] != nil && keys[0] == keys[1])
}
// README: end

// README: begin
@Test func theServiceSendsWhenTheNetworkReturns() async throws {
    let transport = ScriptedTransport()
    transport.script(.fail(URLError(.notConnectedToInternet)), .answer(status: 201))
    let network = ManualConnectivityMonitor(.offline)
    let queue = try Queue(name: "posts", database: try SQLiteQueueDatabase.temporary(), transport: transport)
    let service = SyncService(queues: [queue], configuration: .init(connectivity: network))

    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await service.run() }
        var request = URLRequest(url: URL(string: "https://api.example.com/posts")!)
        request.httpMethod = "POST"
        _ = try await queue.send(request)            // fails: queued
        network.set(.online)                         // the service replays it
        await transport.waitForCalls(2)
        group.cancelAll()
    }
    #expect(transport.requests.count == 2)
}
// README: end
