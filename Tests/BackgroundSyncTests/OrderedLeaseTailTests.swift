@testable import BackgroundSync
import BackgroundSyncTesting
import Foundation
import GRDB
import Testing

/// The last few entries of an ordered replay's batch, found checked too long ago: a lease from the
/// head takes them again, with the next batch, instead of a read that checks them.
@Suite("The tail of an ordered SQLite replay's batch")
struct OrderedLeaseTailTests {
    /// An ordered replay's first batch, its tail (the last quarter, two entries at least), and the
    /// entries taken before the tail.
    private static let batch = SQLiteReplayClaims.orderedLeaseAhead
    private static let taken = batch - batch / 4

    /// A batch and four entries more; an ordered replay (100-second lease, manual clock) that took
    /// the entries of its first batch up to the tail, ten seconds after leasing it, and delivered
    /// them (but the one at `failing`, given back with a failure).
    private func replayAtTheTailOfItsFirstBatch(failing: Int? = nil) async throws
        -> (claims: SQLiteReplayClaims, database: SQLiteQueueDatabase, clock: ManualWallClock, ids: [Int64])
    {
        let database = try SQLiteQueueDatabase.temporary()
        let store = QueueStore(queueName: "q", database: database)
        var ids: [Int64] = []
        try #require(Self.batch - Self.taken >= 2, "a tail of two entries at least")
        for index in 1...(Self.batch + 4) {
            let data = StorableRequest.RequestData(url: "http://127.0.0.1:9/api/posts/\(index)", method: "POST")
            ids.append(try await store.pushEntry(UnidentifiedQueueStoreEntry(requestData: data)))
        }
        let clock = ManualWallClock(start: Date(timeIntervalSince1970: 1_000_000))
        let claims = try #require(
            database.claims(
                queueName: "q", order: .ordered, owner: LeaseOwner.current(), leaseDuration: .seconds(100),
                clock: clock) as? SQLiteReplayClaims)
        for index in 0..<Self.taken {
            guard case .claimed(let entry) = try await claims.next() else { throw Expectation(index) }
            #expect(entry.id == ids[index])
            if index == failing {
                let failure = ReplayFailure(kind: .noResponse, message: "refused")
                try await claims.release(entry, failure: failure, nextAttemptAt: nil)
            } else {
                try await claims.complete(entry)
            }
            if index == 0 { clock.advance(by: .seconds(10)) }
        }
        return (claims, database, clock, ids)
    }

    /// When each entry's lease runs out, by id (`nil`: not leased).
    private func leaseExpiries(_ database: SQLiteQueueDatabase) async throws -> [Int64: Double?] {
        try await database.read("read") { db in
            var expiries: [Int64: Double?] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT id, leaseExpiresAt FROM entry") {
                expiries[row["id"]] = row["leaseExpiresAt"] as Double?
            }
            return expiries
        }
    }

    @Test func theLastEntriesOfABatchAreLeasedAgainWithTheNextOnes() async throws {
        let (claims, database, clock, ids) = try await replayAtTheTailOfItsFirstBatch()
        let leasedAt = clock.now.timeIntervalSince1970 - 10
        var expiries = try await leaseExpiries(database)
        #expect(expiries[ids[Self.taken]] == leasedAt + 100, "the tail, as first leased")
        #expect(expiries[ids[Self.batch]] == .some(nil), "the next batch, not leased yet")

        guard case .claimed(let tailHead) = try await claims.next() else { throw Expectation("the first entry of the tail") }
        #expect(tailHead.id == ids[Self.taken])
        expiries = try await leaseExpiries(database)
        let now = clock.now.timeIntervalSince1970
        #expect(expiries[ids[Self.taken]] == now + 100, "the tail, leased again")
        #expect(expiries[ids[Self.taken + 1]] == now + 100)
        for id in ids[Self.batch...] { #expect(expiries[id] == now + 100, "the next batch, leased with it") }
        #expect(expiries[ids[0]] == nil, "the deliveries, deleted by that lease")

        var rest: [Int64] = []
        try await claims.complete(tailHead)
        while case .claimed(let entry) = try await claims.next() {
            rest.append(entry.id)
            try await claims.complete(entry)
        }
        #expect(rest == Array(ids[(Self.taken + 1)...]), "in order, each once")
        try await claims.finish()
        #expect(try await database.countEntries(queueName: "q", state: .pending) == 0)
    }

    /// An entry of the tail deleted by another process (here the `sqlite3` tool) is not handed out.
    @Test func anEntryOfTheTailDeletedMeanwhileIsSkipped() async throws {
        let (claims, database, clock, ids) = try await replayAtTheTailOfItsFirstBatch()
        try sqlite(database.path, "DELETE FROM entry WHERE id = \(ids[Self.taken + 1])")
        guard case .claimed(let tailHead) = try await claims.next() else { throw Expectation("the first entry of the tail") }
        let expiries = try await leaseExpiries(database)
        #expect(expiries[ids[Self.taken]] == clock.now.timeIntervalSince1970 + 100, "found by a lease, not a check")
        var rest: [Int64] = [tailHead.id]
        try await claims.complete(tailHead)
        while case .claimed(let entry) = try await claims.next() {
            rest.append(entry.id)
            try await claims.complete(entry)
        }
        #expect(rest == Array(ids[Self.taken...].filter { $0 != ids[Self.taken + 1] }))
        try await claims.finish()
    }

    /// After an entry went back, a lease from the head would take it again: the tail is checked.
    @Test func afterAnEntryWentBackTheTailIsCheckedNotLeasedAgain() async throws {
        let (claims, database, clock, ids) = try await replayAtTheTailOfItsFirstBatch(failing: Self.taken - 2)
        guard case .claimed(let tailHead) = try await claims.next() else { throw Expectation("the first entry of the tail") }
        #expect(tailHead.id == ids[Self.taken], "the failed entry is not taken again by this next()")
        let expiries = try await leaseExpiries(database)
        #expect(expiries[ids[Self.taken]] == clock.now.timeIntervalSince1970 - 10 + 100, "checked, not leased again")
        try await claims.finish()
    }
}

private struct Expectation: Error, CustomStringConvertible {
    let description: String
    init(_ what: Any) { description = "expected an entry: \(what)" }
}
