import BackgroundSync
import Foundation

/// The clauses about entries saved by record key (an outbox's records).
extension StoreConformance {
    static var recordChecks: [Check] {
        [
            check("a save by record key replaces the waiting entry in place") { store in
                let database = try await store.open()
                try await push(["a1"], to: "q", database)
                let first = try await database.saveEntry(record("k", "v1"), queueName: "q", registeringSyncTag: "tag-q")
                try await push(["a2"], to: "q", database)
                let second = try await database.saveEntry(record("k", "v2"), queueName: "q", registeringSyncTag: "tag-q")
                try expectEqual(second.id, first.id, "id of the replaced entry")
                try expectEqual(second.size, 3, "size after the second save")
                try expectEqual(try await paths("q", database), ["a1", "v2", "a2"], "queue order")
                try expectEqual(try await database.entry(id: first.id)?.recordKey, "k", "record key read back")
                try expectEqual(try await database.syncTags(), ["tag-q"], "registered tags")
                _ = try await database.saveEntry(record("k", "other queue"), queueName: "r", registeringSyncTag: nil)
                try expectEqual(try await paths("q", database), ["a1", "v2", "a2"], "queue q after a save to r")
                try expectEqual(try await paths("r", database), ["other queue"], "queue r")
            },
            check("a save goes behind an entry a replay holds, and brings a dead letter back in place") { store in
                let database = try await store.open()
                let saved = try await database.saveEntry(record("k", "v1"), queueName: "q", registeringSyncTag: nil)
                let claims = database.claims(
                    queueName: "q", order: .ordered, owner: .current(), leaseDuration: .seconds(300), clock: SystemWallClock())
                let held = try await claimed(claims, "v1")
                let behind = try await database.saveEntry(record("k", "v2"), queueName: "q", registeringSyncTag: nil)
                try expect(behind.id != saved.id, "a save replaced the entry a replay holds (it may be sending it now)")
                try expectEqual(try await paths("q", database), ["v1", "v2"], "queue order while v1 is held")
                try await claims.complete(held)
                let next = try await claimed(claims, "v2")
                try await claims.deadLetter(next, failure: ReplayFailure(kind: .httpStatus, status: 422, message: "HTTP 422"))
                try await claims.finish()
                try expectEqual(try await paths("q", database, state: .dead), ["v2"], "dead letters")

                let revived = try await database.saveEntry(record("k", "v3"), queueName: "q", registeringSyncTag: nil)
                try expectEqual(revived.id, behind.id, "id of the dead letter saved again")
                try expectEqual(try await paths("q", database), ["v3"], "pending after the save")
                try expectEqual(try await database.countEntries(queueName: "q", state: .dead), 0, "dead letters left")
                guard let entry = try await database.entry(id: revived.id) else { throw Expectation(message: "entry gone") }
                try expect(
                    entry.attempts == 0 && entry.lastFailure == nil && entry.nextAttemptAt == nil,
                    "a saved entry starts afresh: attempts \(entry.attempts), failure \(String(describing: entry.lastFailure))")
            },
            check("a save does not replace an entry delivered and not yet deleted") { store in
                let database = try await store.open()
                _ = try await database.saveEntry(record("k", "v1"), queueName: "q", registeringSyncTag: nil)
                // Leased an hour ago (a replay whose send outlived its lease): only the delivery
                // not yet deleted holds the entry now.
                let clock = ManualWallClock(start: Date().addingTimeInterval(-3600))
                let claims = database.claims(
                    queueName: "q", order: .ordered, owner: .current(), leaseDuration: .seconds(300), clock: clock)
                let delivered = try await claimed(claims, "v1")
                try await claims.complete(delivered)
                let saved = try await database.saveEntry(record("k", "v2"), queueName: "q", registeringSyncTag: nil)
                try expect(saved.id != delivered.id, "a save replaced an entry whose delivery is not deleted yet")
                try await claims.finish()
                try expectEqual(try await paths("q", database), ["v2"], "queue after the replay finished")
            },
            check("delete by record key removes that record's entries only") { store in
                let database = try await store.open()
                _ = try await database.saveEntry(record("k1", "one"), queueName: "q", registeringSyncTag: nil)
                _ = try await database.saveEntry(record("k2", "two"), queueName: "q", registeringSyncTag: nil)
                _ = try await database.saveEntry(record("k1", "elsewhere"), queueName: "r", registeringSyncTag: nil)
                try expectEqual(try await database.deleteEntries(queueName: "q", recordKey: "k1"), 1, "deleted")
                try expectEqual(try await database.deleteEntries(queueName: "q", recordKey: "k1"), 0, "deleted again")
                try expectEqual(try await paths("q", database), ["two"], "queue q")
                try expectEqual(try await paths("r", database), ["elsewhere"], "queue r")
                try expectEqual(try await database.countEntries(queueName: "q", state: .pending), 1, "count")
                var unkeyed = false
                do {
                    _ = try await database.saveEntry(entry("no key"), queueName: "q", registeringSyncTag: nil)
                } catch let error as BackgroundSyncError where error.code == .invalidRequest {
                    unkeyed = true
                }
                try expect(unkeyed, "a save without a record key must throw invalidRequest")
            },
        ]
    }

    /// A stored request carrying `path`, saved under `key`.
    static func record(_ key: String, _ path: String) -> UnidentifiedQueueStoreEntry {
        var stored = entry(path)
        stored.recordKey = key
        return stored
    }
}
