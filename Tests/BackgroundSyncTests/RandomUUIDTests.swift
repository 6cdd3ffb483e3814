@testable import BackgroundSync
import Foundation
import Testing

@Suite("Random UUIDs")
struct RandomUUIDTests {
    /// The `Idempotency-Key`s come from a buffer of system random bytes refilled every 256 UUIDs:
    /// across refills, and from concurrent tasks, every one is a distinct version-4 UUID.
    @Test func distinctVersion4AcrossBufferRefillsAndTasks() async {
        let keys = await withTaskGroup(of: [UUID].self) { group in
            for _ in 0..<4 { group.addTask { (0..<600).map { _ in UUID.random() } } }
            return await group.reduce(into: []) { $0 += $1 }
        }
        #expect(keys.count == 2400)
        #expect(Set(keys).count == keys.count)
        for key in keys {
            #expect(key.uuid.6 >> 4 == 4 && key.uuid.8 >> 6 == 0b10)
            #expect(key.lowercasedString == key.uuidString.lowercased())
        }
    }
}
