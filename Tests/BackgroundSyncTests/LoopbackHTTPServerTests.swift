import BackgroundSync
import BackgroundSyncTesting
import Foundation
import LoopbackHTTPServer
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("LoopbackHTTPServer", .timeLimit(.minutes(1)))
struct LoopbackHTTPServerTests {
    @Test func aRestartedServerStillDelaysAndStopEndsAHang() async throws {
        let (hangs, hangArrived) = AsyncStream.makeStream(of: Void.self)
        let server = LoopbackHTTPServer { request in
            guard request.path == "/hang" else { return .respond(.text("late"), delay: .milliseconds(100)) }
            hangArrived.yield()
            return .hang(.seconds(30))
        }
        let port = try server.start()
        server.stop()
        try server.start(port: port)
        let transport = URLSessionTransport()
        let response = try await transport.send(URLRequest(url: server.baseURL.appendingPathComponent("slow")))
        #expect(response.status == 200)
        #expect(response.body == Data("late".utf8), "a delay after a restart is still a delay, not a closed connection")

        // A hanging request ends when the server stops, long before its 30 seconds.
        let hanging = Task { try await transport.send(URLRequest(url: server.baseURL.appendingPathComponent("hang"))) }
        var arrivals = hangs.makeAsyncIterator()
        await arrivals.next()
        server.stop()
        await #expect(throws: (any Error).self) { try await hanging.value }
    }
}
