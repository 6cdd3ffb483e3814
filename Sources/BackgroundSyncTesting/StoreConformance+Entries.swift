import BackgroundSync
import Foundation

/// The clauses about storing, reading and administering entries.
extension StoreConformance {
    static var entryChecks: [Check] {
        [
            check("push keeps order per queue and reports the size") { store in
                let database = try await store.open()
                var sizes: [Int] = []
                for (path, queue) in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("a3", "a"), ("b2", "b")] {
                    let pushed = try await database.pushEntry(entry(path), queueName: queue, at: .tail, registeringSyncTag: nil)
                    if queue == "a" { sizes.append(pushed.size) }
                }
                try expectEqual(sizes, [1, 2, 3], "sizes after each push to queue a")
                try expectEqual(try await paths("a", database), ["a1", "a2", "a3"], "queue a")
                try expectEqual(try await paths("b", database), ["b1", "b2"], "queue b")
            },
            check("unshift goes before the head of its own queue only") { store in
                let database = try await store.open()
                try await push(["a1", "a2"], to: "a", database)
                try await push(["b1"], to: "b", database)
                _ = try await database.pushEntry(entry("a0"), queueName: "a", at: .head, registeringSyncTag: nil)
                _ = try await database.pushEntry(entry("a-1"), queueName: "a", at: .head, registeringSyncTag: nil)
                _ = try await database.pushEntry(entry("b0"), queueName: "b", at: .head, registeringSyncTag: nil)
                try await push(["a3"], to: "a", database)
                try expectEqual(try await paths("a", database), ["a-1", "a0", "a1", "a2", "a3"], "queue a")
                try expectEqual(try await paths("b", database), ["b0", "b1"], "queue b")
            },
            check("remove takes either end and never an entry a live replay holds") { store in
                let database = try await store.open()
                try await push(["1", "2", "3", "4"], to: "q", database)
                let claims = database.claims(
                    queueName: "q", order: .ordered, owner: .current(), leaseDuration: .seconds(300), clock: SystemWallClock())
                let held = try await claimed(claims, "head")
                try expectEqual(path(held), "1", "claimed head")
                // Entries leased ahead are held too: a driver may return them or not, never the one handed out.
                let shifted = try await database.removeEntry(queueName: "q", at: .head)
                try expect(shifted.map(path) != "1", "shift returned the entry a replay holds")
                try await claims.finish()
                var left = ["1", "2", "3", "4"]
                if let shifted { left.removeAll { $0 == path(shifted) } }
                try expectEqual(try await paths("q", database), left, "left")
                try expectEqual(try await database.removeEntry(queueName: "q", at: .head).map(path), left.first, "shift")
                try expectEqual(try await database.removeEntry(queueName: "q", at: .tail).map(path), left.last, "pop")
                while try await database.removeEntry(queueName: "q", at: .tail) != nil {}
                try expect(try await database.removeEntry(queueName: "q", at: .head) == nil, "an empty queue gives nil")
            },
            check("an entry reads back as it was stored") { store in
                let database = try await store.open()
                let stored = UnidentifiedQueueStoreEntry(
                    requestData: StorableRequest.RequestData(
                        url: "https://conformance.example/p?q=1&r=%C3%A9", method: "PATCH",
                        headers: ["content-type": "application/octet-stream", "x-quote": "a \"b\" \\ c", "x-é": "ü"],
                        body: Data([0, 1, 2, 0xFF, 0xFE, 0x0A, 0x0D]), timeoutInterval: 12.5, cachePolicy: 1,
                        httpShouldHandleCookies: false, allowsCellularAccess: false,
                        mainDocumentURL: "https://conformance.example/"),
                    timestamp: Date(timeIntervalSince1970: 1_800_000_000.25),
                    metadata: ["draft": "42", "emoji": "✓", "empty": ""],
                    idempotencyKey: "4c1e8d0e-7a39-4a53-9d1a-6f0b3f9e2c11", sealedSecrets: Data([9, 8, 7]))
                var tried = entry("tried")
                tried.attempts = 1
                tried.nextAttemptAt = Date(timeIntervalSince1970: 1_800_000_120.5)
                tried.lastFailure = ReplayFailure(
                    kind: .httpStatus, status: 503, message: "HTTP 503", responseExcerpt: Data("busy".utf8))
                let id = try await database.pushEntry(stored, queueName: "q", at: .tail, registeringSyncTag: nil).id
                guard let read = try await database.entry(id: id) else { throw Expectation(message: "entry \(id) not found") }
                try expectEqual(read.requestData, stored.requestData, "request")
                try expect(
                    abs(read.timestamp.timeIntervalSince(stored.timestamp)) < 0.001,
                    "timestamp: expected \(stored.timestamp), got \(read.timestamp)")
                try expectEqual(read.metadata, stored.metadata, "metadata")
                try expectEqual(read.idempotencyKey, stored.idempotencyKey, "idempotency key")
                try expectEqual(read.sealedSecrets, stored.sealedSecrets, "sealed secrets")
                try expectEqual(read.queueName, "q", "queue")
                try expectEqual(read.state, .pending, "state")
                try expectEqual(read.attempts, 0, "attempts")
                try expect(read.lastFailure == nil && read.nextAttemptAt == nil, "a new entry has no failure")
                let triedID = try await database.pushEntry(tried, queueName: "q", at: .tail, registeringSyncTag: nil).id
                guard let readTried = try await database.entry(id: triedID) else { throw Expectation(message: "entry \(triedID) not found") }
                try expectEqual(readTried.attempts, 1, "attempts of an entry pushed after a failed attempt")
                try expectEqual(readTried.lastFailure, tried.lastFailure, "failure of an entry pushed after a failed attempt")
                try expect(
                    readTried.nextAttemptAt.map { abs($0.timeIntervalSince(tried.nextAttemptAt!)) < 0.001 } == true,
                    "next attempt: expected \(tried.nextAttemptAt!), got \(String(describing: readTried.nextAttemptAt))")
                try expect(try await database.entry(id: id + 1_000_000) == nil, "an unknown id gives nil")
            },
            check("pages follow queue order, and an entry deleted meanwhile does not end them") { store in
                let database = try await store.open()
                var ids = try await push((0..<25).map { "e\($0)" }, to: "q", database)
                _ = try await database.pushEntry(entry("first"), queueName: "q", at: .head, registeringSyncTag: nil)
                var seen: [String] = []
                var after: Int64?
                var pageSizes: [Int] = []
                repeat {
                    let page = try await database.entries(queueName: "q", state: .pending, afterPosition: after, limit: 10)
                    pageSizes.append(page.count)
                    seen += page.map(path)
                    after = page.last?.position
                    // The page's last entry goes away before the next page is read.
                    if let last = page.last, pageSizes.count == 1 {
                        try await database.deleteEntries(ids: [last.id])
                        ids.removeAll { $0 == last.id }
                    }
                } while pageSizes.last == 10
                try expectEqual(seen, ["first"] + (0..<25).map { "e\($0)" }, "entries over the pages")
                try expectEqual(pageSizes, [10, 10, 6], "page sizes")
                let positions = try await database.entries(queueName: "q", state: .pending).map(\.position)
                try expectEqual(positions, positions.sorted(), "positions follow queue order")
            },
            check("counts match the lists in both states") { store in
                let database = try await store.open()
                let ids = try await push(["1", "2", "3", "4"], to: "q", database)
                let failure = ReplayFailure(kind: .setAside, message: "by the conformance suite")
                try expectEqual(
                    try await database.setAsideEntries(queueName: "q", ids: [ids[1], ids[3]], failure: failure), 2,
                    "set aside")
                try expectEqual(try await database.countEntries(queueName: "q", state: .pending), 2, "pending count")
                try expectEqual(try await database.countEntries(queueName: "q", state: .dead), 2, "dead count")
                try expectEqual(try await database.countEntries(queueName: "nosuch", state: .pending), 0, "unknown queue")
                let summaries = try await database.queueSummaries()
                try expectEqual(summaries.map(\.name), ["q"], "summaries")
                try expectEqual(summaries.first?.size, 2, "summary size")
                try expectEqual(summaries.first?.deadLetterCount, 2, "summary dead letters")
                try expect(
                    abs((summaries.first?.headTimestamp ?? .distantPast).timeIntervalSince1970 - 1_800_000_000) < 0.001,
                    "summary head timestamp")
                try expectEqual(try await database.queueNames(), ["q"], "queue names")
            },
            check("a dead letter is requeued at its old position, attempts and failure cleared") { store in
                let database = try await store.open()
                let ids = try await push(["1", "2", "3"], to: "q", database)
                let failure = ReplayFailure(kind: .httpStatus, status: 422, message: "HTTP 422", responseExcerpt: Data("no".utf8))
                let claims = database.claims(
                    queueName: "q", order: .ordered, owner: .current(), leaseDuration: .seconds(300), clock: SystemWallClock())
                let first = try await claimed(claims, "head")
                try await claims.deadLetter(first, failure: failure)
                try await claims.finish()
                let dead = try await database.entries(queueName: "q", state: .dead)
                try expectEqual(dead.map(\.id), [ids[0]], "dead letters")
                try expectEqual(dead.first?.lastFailure, failure, "recorded failure")
                try expectEqual(dead.first?.attempts, 1, "attempts counted")
                try expectEqual(try await paths("q", database), ["2", "3"], "pending")
                try expectEqual(try await database.requeueDeadEntries(queueName: "q", ids: [ids[0]]), 1, "requeued")
                try expectEqual(try await paths("q", database), ["1", "2", "3"], "order after requeue")
                let requeued = try await database.entry(id: ids[0])
                try expect(requeued?.attempts == 0 && requeued?.lastFailure == nil, "requeue clears attempts and failure")
                try expectEqual(try await database.requeueDeadEntries(queueName: "q", ids: [ids[1]]), 0, "a pending id")
            },
            check("set aside, delete and purge") { store in
                let database = try await store.open()
                let ids = try await push(["1", "2", "3"], to: "q", database)
                try await push(["x"], to: "other", database)
                let failure = ReplayFailure(kind: .setAside, message: "stuck")
                try expectEqual(try await database.setAsideEntries(queueName: "q", ids: [ids[0]], failure: failure), 1, "set aside")
                try expectEqual(try await database.entry(id: ids[0])?.lastFailure, failure, "set-aside failure")
                try expectEqual(
                    try await database.setAsideEntries(queueName: "other", ids: [ids[1]], failure: failure), 0,
                    "an id of another queue")
                try expectEqual(try await database.deleteEntries(ids: [ids[1], ids[1] + 1_000_000]), 1, "deleted by id")
                try expectEqual(try await database.deleteEntries(queueName: "q", state: .dead), 1, "purged dead letters")
                try expectEqual(try await paths("q", database), ["3"], "left in q")
                try expectEqual(try await database.deleteEntries(queueName: nil, state: nil), 2, "purged everything")
                try expectEqual(try await database.countEntries(queueName: "other", state: .pending), 0, "other queue")
            },
            check("sync tags: idempotent, oldest first, and written with a push") { store in
                let database = try await store.open()
                let start = Date(timeIntervalSince1970: 1_800_000_000)
                try await database.registerSyncTag("t1", at: start)
                try await database.registerSyncTag("t2", at: start.addingTimeInterval(1))
                try await database.registerSyncTag("t1", at: start.addingTimeInterval(2))
                try expectEqual(try await database.syncTags(), ["t1", "t2"], "tags")
                try await database.unregisterSyncTag("t1")
                try await database.unregisterSyncTag("t1")
                try expectEqual(try await database.syncTags(), ["t2"], "after unregistering")
                _ = try await database.pushEntry(entry("p"), queueName: "q", at: .tail, registeringSyncTag: "t3")
                try expect(try await database.syncTags().contains("t3"), "a push registers its tag")
            },
            check("a sync gives its registration up only when its queue holds no pending entry") { store in
                let (database, other) = (try await store.open(), try await store.open())
                _ = try await database.pushEntry(entry("a"), queueName: "q", at: .tail, registeringSyncTag: "tag-q")
                let claims = ordered(database, clock: ManualWallClock())
                let a = try await claimed(claims, "a")
                // Another instance pushes while the sync runs: the tag is registered already.
                _ = try await other.pushEntry(entry("b"), queueName: "q", at: .tail, registeringSyncTag: "tag-q")
                try await claims.complete(a)
                try await claims.finish()
                try expect(!(try await database.unregisterSyncTag("tag-q", ifNoPendingEntriesIn: "q")), "kept for b")
                try expectEqual(try await other.syncTags(), ["tag-q"], "tags after a sync that left b")
                // An entry another replayer holds keeps it too: that replay may fail.
                let held = ordered(other, clock: ManualWallClock())
                let b = try await claimed(held, "b")
                try expect(!(try await database.unregisterSyncTag("tag-q", ifNoPendingEntriesIn: "q")), "kept for held b")
                try await held.complete(b)
                try await held.finish()
                try expect(try await database.unregisterSyncTag("tag-q", ifNoPendingEntriesIn: "q"), "removed once empty")
                try expectEqual(try await other.syncTags(), [], "tags at the end")
                try expect(try await database.unregisterSyncTag("tag-q", ifNoPendingEntriesIn: "q"), "idempotent")
            },
            check("everything survives reopening") { store in
                var ids: [Int64] = []
                do {
                    let database = try await store.open()
                    ids = try await push(["1", "2", "3", "4"], to: "q", database)
                    _ = try await database.pushEntry(entry("0"), queueName: "q", at: .head, registeringSyncTag: "tag")
                    let claims = database.claims(
                        queueName: "q", order: .ordered, owner: .current(), leaseDuration: .seconds(300),
                        clock: SystemWallClock())
                    let head = try await claimed(claims, "head")
                    try await claims.complete(head)
                    let failure = ReplayFailure(kind: .noResponse, message: "offline")
                    try await claims.release(try await claimed(claims, "second"), failure: failure, nextAttemptAt: nil)
                    try await claims.finish()
                    try await database.setAsideEntries(
                        queueName: "q", ids: [ids[3]], failure: ReplayFailure(kind: .setAside, message: "x"))
                }
                let reopened = try await store.open()
                try expectEqual(try await paths("q", reopened), ["1", "2", "3"], "pending after reopening")
                try expectEqual(try await paths("q", reopened, state: .dead), ["4"], "dead after reopening")
                let first = try await reopened.entry(id: ids[0])
                try expect(first?.attempts == 1 && first?.lastFailure?.kind == .noResponse, "the failure survives")
                try expectEqual(try await reopened.syncTags(), ["tag"], "tags after reopening")
                try expectEqual(try await reopened.countEntries(queueName: "q", state: .pending), 3, "count")
            },
        ]
    }
}
