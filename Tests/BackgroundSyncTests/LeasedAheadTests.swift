@testable import BackgroundSync
import Foundation
import Testing

/// The entries a SQLite replay leased ahead come out in queue order, whatever the hand-outs,
/// appends and reclaims of handed-out storage in between.
struct LeasedAheadTests {
    private func entries(_ ids: ClosedRange<Int64>) -> [QueueStoreEntry] {
        ids.map {
            QueueStoreEntry(
                id: $0, queueName: "q", requestData: .init(url: "https://example.com/\($0)", method: "POST"),
                timestamp: Date(timeIntervalSince1970: 0))
        }
    }

    @Test func handsOutInOrderAcrossAppendsAndReclaims() {
        var leased = LeasedAhead()
        #expect(leased.isEmpty && leased.firstID == nil && leased.popFirst() == nil)
        leased.append(contentsOf: entries(1...40))
        var handedOut: [Int64] = []
        // Past the point where the storage ahead is reclaimed, with entries still behind.
        for _ in 0..<25 { handedOut.append(leased.popFirst()!.id) }
        #expect(leased.count == 15 && leased.firstID == 26)
        leased.append(contentsOf: entries(41...50))
        #expect(leased.entries.map(\.id) == Array(26...50))
        while let entry = leased.popFirst() { handedOut.append(entry.id) }
        #expect(handedOut == Array(1...50))
        #expect(leased.isEmpty && leased.count == 0)
    }

    @Test func removeAllTakesWhatIsLeftInOrder() {
        var leased = LeasedAhead(entries(1...20))
        for _ in 0..<17 { _ = leased.popFirst() }
        #expect(leased.removeAll().map(\.id) == [18, 19, 20])
        #expect(leased.isEmpty && leased.entries.isEmpty)
        leased.append(contentsOf: entries(21...22))
        #expect(leased.popFirst()?.id == 21)
    }
}
