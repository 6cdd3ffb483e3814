import BackgroundSync
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The clauses about replay claims: order, exclusivity, leases, outcomes.
extension StoreConformance {
    static func ordered(
        _ database: any QueueDatabase, _ queue: String = "q", owner: LeaseOwner = .current(),
        lease: Duration = .seconds(60), clock: any WallClock
    ) -> any ReplayClaims {
        database.claims(queueName: queue, order: .ordered, owner: owner, leaseDuration: lease, clock: clock)
    }

    static var replayChecks: [Check] {
        [
            check("ordered claims hand out a queue's entries in order, and delivered ones are deleted") { store in
                let database = try await store.open()
                try await push((1...20).map(String.init), to: "q", database)
                try await push(["other"], to: "r", database)
                let claims = ordered(database, clock: ManualWallClock())
                var sent: [String] = []
                while case .claimed(let entry) = try await claims.next() {
                    sent.append(path(entry))
                    try await claims.complete(entry)
                }
                try await claims.finish()
                try expectEqual(sent, (1...20).map(String.init), "order")
                try expectEqual(try await database.countEntries(queueName: "q", state: .pending), 0, "left in q")
                try expectEqual(try await store.open().countEntries(queueName: "q", state: .pending), 0, "seen by another instance")
                try expectEqual(try await paths("r", database), ["other"], "other queue")
            },
            check("a delivered entry leaves counts and lists at once, and is deleted by finish") { store in
                let database = try await store.open()
                try await push(["1", "2", "3"], to: "q", database)
                let claims = ordered(database, clock: ManualWallClock())
                try await claims.complete(try await claimed(claims, "head"))
                try expectEqual(try await database.countEntries(queueName: "q", state: .pending), 2, "count")
                try expectEqual(try await paths("q", database), ["2", "3"], "list")
                let pushed = try await database.pushEntry(entry("4"), queueName: "q", at: .tail, registeringSyncTag: nil)
                try expectEqual(pushed.size, 3, "the size a push reports")
                try await claims.finish()
                try expectEqual(try await store.open().countEntries(queueName: "q", state: .pending), 3, "after finish")
            },
            check("an ordered queue sends nothing past an entry another replayer holds") { store in
                let (one, two) = (try await store.open(), try await store.open())
                try await push(["1", "2", "3"], to: "q", one)
                let clock = ManualWallClock()
                let first = ordered(one, clock: clock)
                let head = try await claimed(first, "first replayer")
                let second = ordered(two, clock: clock)
                let result = try await second.next()
                guard case .busy(let owner, _) = result else {
                    throw Expectation(message: "second replayer: expected busy, got \(result)")
                }
                try expect(owner.contains("|"), "busy names the holder (got '\(owner)')")
                try await second.finish()
                try await first.release(head, failure: nil, nextAttemptAt: nil)
                try await first.finish()
                let third = ordered(two, clock: clock)
                try expectEqual(path(try await claimed(third, "after the holder finished")), "1", "head")
                try await third.finish()
            },
            check("concurrent claims of two instances never hand out one entry twice") { store in
                let (one, two) = (try await store.open(), try await store.open())
                try await push((1...40).map(String.init), to: "q", one)
                let clock = ManualWallClock()
                let first = one.claims(
                    queueName: "q", order: .concurrent(maxInFlight: 4), owner: .current(), leaseDuration: .seconds(60),
                    clock: clock)
                let second = two.claims(
                    queueName: "q", order: .concurrent(maxInFlight: 4), owner: .current(), leaseDuration: .seconds(60),
                    clock: clock)
                async let a = drain(first)
                async let b = drain(second)
                let (fromFirst, fromSecond) = try await (a, b)
                let ids = fromFirst.map(\.id) + fromSecond.map(\.id)
                try expectEqual(ids.count, 40, "entries handed out")
                try expectEqual(Set(ids).count, 40, "distinct entries")
                for entry in fromFirst { try await first.complete(entry) }
                try await first.finish()
                try await second.finish()
                try expectEqual(try await paths("q", one).count, fromSecond.count, "given back by finish")
            },
            check("an expired lease is taken over; a fresh one is not") { store in
                let (one, two) = (try await store.open(), try await store.open())
                try await push(["1", "2"], to: "q", one)
                let clock = ManualWallClock()
                let first = ordered(one, lease: .seconds(60), clock: clock)
                _ = try await claimed(first, "first replayer")
                clock.advance(by: .seconds(30))
                let early = ordered(two, clock: clock)
                let result = try await early.next()
                guard case .busy = result else { throw Expectation(message: "before expiry: expected busy, got \(result)") }
                try await early.finish()
                clock.advance(by: .seconds(31))
                let late = ordered(two, clock: clock)
                try expectEqual(path(try await claimed(late, "after expiry")), "1", "taken over")
                try await late.finish()
            },
            check("a replayer whose leases ran out during its sends changes none of the entries taken over") { store in
                let (one, two) = (try await store.open(), try await store.open())
                try await push(["1", "2", "3"], to: "q", one)
                let clock = ManualWallClock()
                func claims(_ database: any QueueDatabase, _ owner: LeaseOwner) -> any ReplayClaims {
                    database.claims(
                        queueName: "q", order: .concurrent(maxInFlight: 3), owner: owner, leaseDuration: .seconds(60),
                        clock: clock)
                }
                let slow = claims(one, .current())
                let held = [try await claimed(slow, "1st"), try await claimed(slow, "2nd"), try await claimed(slow, "3rd")]
                clock.advance(by: .seconds(61))
                let other = claims(two, LeaseOwner(host: "elsewhere", processID: 1, token: "other"))
                let taken = [try await claimed(other, "1st"), try await claimed(other, "2nd"), try await claimed(other, "3rd")]
                try expectEqual(Set(taken.map(\.id)), Set(held.map(\.id)), "taken over")
                // The first replayer's answers come in late.
                let failure = ReplayFailure(kind: .httpStatus, status: 422, message: "HTTP 422")
                try await slow.complete(held[0])
                try await slow.release(held[1], failure: failure, nextAttemptAt: clock.now.addingTimeInterval(600))
                try await slow.deadLetter(held[2], failure: failure)
                try await slow.finish()
                try expectEqual(try await paths("q", one).count, 3, "still pending")
                for entry in held {
                    try expectEqual(try await two.entry(id: entry.id)?.attempts, 0, "no attempt counted on \(path(entry))")
                }
                for entry in taken { try await other.complete(entry) }
                try await other.finish()
                try expectEqual(try await two.countEntries(queueName: "q", state: .pending), 0, "delivered by the other")
            },
            check("a lease of a dead process of this host is taken over at once") { store in
                // Only where a process's liveness can be checked (Linux, macOS).
                guard LeaseOwner.isAbandoned("\(ProcessInfo.processInfo.hostName)|\(deadProcessID())|x") else { return }
                let (one, two) = (try await store.open(), try await store.open())
                try await push(["1"], to: "q", one)
                let dead = LeaseOwner(host: ProcessInfo.processInfo.hostName, processID: deadProcessID(), token: "gone")
                let clock = ManualWallClock()
                _ = try await claimed(ordered(one, owner: dead, lease: .seconds(3600), clock: clock), "dead owner")
                let survivor = ordered(two, clock: clock)
                try expectEqual(path(try await claimed(survivor, "survivor")), "1", "taken over")
                try await survivor.finish()
            },
            check("release records the failure; concurrent claims wait for the next attempt, ordered ones do not") { store in
                let database = try await store.open()
                try await push(["1", "2"], to: "q", database)
                let clock = ManualWallClock()
                let claims = ordered(database, clock: clock)
                let head = try await claimed(claims, "head")
                let failure = ReplayFailure(
                    kind: .httpStatus, status: 503, message: "HTTP 503", responseExcerpt: Data("busy".utf8))
                let next = clock.now.addingTimeInterval(120)
                try await claims.release(head, failure: failure, nextAttemptAt: next)
                try await claims.finish()
                let stored = try await database.entry(id: head.id)
                try expectEqual(stored?.attempts, 1, "attempts")
                try expectEqual(stored?.lastFailure, failure, "failure")
                try expect(
                    abs((stored?.nextAttemptAt ?? .distantPast).timeIntervalSince(next)) < 0.001, "next attempt time")
                let concurrent = database.claims(
                    queueName: "q", order: .concurrent(maxInFlight: 2), owner: .current(), leaseDuration: .seconds(60),
                    clock: clock)
                try expectEqual(try await drain(concurrent).map(path), ["2"], "concurrent claims skip the entry in backoff")
                try await concurrent.finish()
                let inOrder = ordered(database, clock: clock)
                try expectEqual(path(try await claimed(inOrder, "ordered")), "1", "ordered claims take the head in backoff")
                try await inOrder.finish()
                clock.advance(by: .seconds(121))
                let later = database.claims(
                    queueName: "q", order: .concurrent(maxInFlight: 2), owner: .current(), leaseDuration: .seconds(60),
                    clock: clock)
                try expectEqual(Set(try await drain(later).map(path)), ["1", "2"], "due again")
                try await later.finish()
            },
            check("every failure kind is recorded as given") { store in
                let database = try await store.open()
                let kinds = ReplayFailure.Kind.allCases
                let ids = try await push(kinds.map(\.rawValue), to: "q", database)
                let claims = ordered(database, clock: ManualWallClock())
                for kind in kinds {
                    let entry = try await claimed(claims, kind.rawValue)
                    let failure = ReplayFailure(kind: kind, status: kind == .httpStatus ? 500 : nil, message: kind.rawValue)
                    try await claims.release(entry, failure: failure, nextAttemptAt: nil)
                }
                try await claims.finish()
                for (id, kind) in zip(ids, kinds) {
                    try expectEqual(try await database.entry(id: id)?.lastFailure?.kind, kind, "kind of entry \(id)")
                }
            },
            check("finish gives back every entry still leased, counting nothing") { store in
                let (one, two) = (try await store.open(), try await store.open())
                try await push((1...12).map(String.init), to: "q", one)
                let clock = ManualWallClock()
                let claims = ordered(one, clock: clock)
                let head = try await claimed(claims, "head")
                try await claims.complete(head)
                _ = try await claimed(claims, "second, never resolved")
                try await claims.finish()
                let next = ordered(two, clock: clock)
                try expectEqual(path(try await claimed(next, "after finish")), "2", "head after finish")
                try await next.finish()
                let second = try await two.entries(queueName: "q", state: .pending).first
                try expect(second?.attempts == 0 && second?.lastFailure == nil, "nothing counted on a given-back entry")
                try expectEqual(try await two.countEntries(queueName: "q", state: .pending), 11, "left")
            },
            check("entries leased ahead are leased again before half their lease is gone") { store in
                let (one, two) = (try await store.open(), try await store.open())
                try await push((1...4).map(String.init), to: "q", one)
                let clock = ManualWallClock()
                let claims = ordered(one, lease: .seconds(100), clock: clock)
                try await claims.complete(try await claimed(claims, "1"))
                clock.advance(by: .seconds(60))
                let second = try await claimed(claims, "2, after 60 of 100 seconds")
                // Whatever was leased ahead, the entry handed out now must hold for a full lease:
                // another replayer 90 seconds later still finds the queue busy.
                clock.advance(by: .seconds(90))
                let other = ordered(two, clock: clock)
                let result = try await other.next()
                guard case .busy = result else {
                    throw Expectation(message: "entry \(path(second)) handed out late: expected busy, got \(result)")
                }
                try await other.finish()
                try await claims.finish()
            },
            check("several tasks sharing one concurrent claims get each entry once") { store in
                let database = try await store.open()
                try await push((1...40).map(String.init), to: "q", database)
                let claims = database.claims(
                    queueName: "q", order: .concurrent(maxInFlight: 4), owner: .current(), leaseDuration: .seconds(60),
                    clock: ManualWallClock())
                let sent = try await withThrowingTaskGroup(of: [String].self) { group in
                    for _ in 0..<4 {
                        group.addTask {
                            var sent: [String] = []
                            while case .claimed(let entry) = try await claims.next() {
                                sent.append(path(entry))
                                try await claims.complete(entry)
                            }
                            return sent
                        }
                    }
                    return try await group.reduce(into: [String]()) { $0 += $1 }
                }
                try await claims.finish()
                try expectEqual(sent.sorted(), (1...40).map(String.init).sorted(), "entries handed out")
                try expectEqual(try await store.open().countEntries(queueName: "q", state: .pending), 0, "all deleted")
            },
            check("an entry deleted or set aside after it was leased is not handed out, and stays as left") { store in
                let (one, two) = (try await store.open(), try await store.open())
                let ids = try await push(["1", "2", "3", "4"], to: "q", one)
                let claims = ordered(one, clock: ManualWallClock())
                let head = try await claimed(claims, "head")
                // Another process acts on entries this replay may have leased ahead, and on the one
                // it is sending.
                try await two.deleteEntries(ids: [ids[2]])
                try await two.setAsideEntries(
                    queueName: "q", ids: [ids[0], ids[1]], failure: ReplayFailure(kind: .setAside, message: "by hand"))
                try await claims.release(
                    head, failure: ReplayFailure(kind: .noResponse, message: "offline"), nextAttemptAt: nil)
                try expectEqual(path(try await claimed(claims, "next")), "4", "the next entry handed out")
                try await claims.finish()
                let dead = try await one.entries(queueName: "q", state: .dead)
                try expectEqual(dead.map(path), ["1", "2"], "set aside")
                try expectEqual(dead.first?.lastFailure?.kind, .setAside, "a release does not undo a set-aside")
            },
            check("an entry set aside while in flight and then accepted by the server is deleted") { store in
                let (one, two) = (try await store.open(), try await store.open())
                let ids = try await push(["1", "2"], to: "q", one)
                let claims = ordered(one, clock: ManualWallClock())
                let head = try await claimed(claims, "head")
                try await two.setAsideEntries(
                    queueName: "q", ids: [ids[0]], failure: ReplayFailure(kind: .setAside, message: "by hand"))
                try await claims.complete(head)
                try await claims.finish()
                try expectEqual(try await paths("q", two, state: .dead), [], "no dead letter left")
                try expectEqual(try await paths("q", two), ["2"], "pending")
            },
            check("a record saved anew after its lease ran out is not changed by the old version's outcome") { store in
                let (one, two) = (try await store.open(), try await store.open())
                _ = try await one.saveEntry(record("k", "v1"), queueName: "q", registeringSyncTag: nil)
                // Leased two minutes ago for one: a save (which reads the system's clock) finds the
                // lease run out.
                let clock = ManualWallClock(start: Date().addingTimeInterval(-120))
                let claims = ordered(one, lease: .seconds(60), clock: clock)
                let old = try await claimed(claims, "v1")
                // The app saves the record again while v1's answer is still to come.
                _ = try await two.saveEntry(record("k", "v2"), queueName: "q", registeringSyncTag: nil)
                try await claims.deadLetter(old, failure: ReplayFailure(kind: .httpStatus, status: 422, message: "HTTP 422"))
                try await claims.finish()
                let pending = try await two.entries(queueName: "q", state: .pending)
                try expect(pending.contains { path($0) == "v2" && $0.attempts == 0 }, "v2 pending, no attempt: \(pending.map(path))")
            },
            check("an entry handed out at once was checked within the age asked for, and counts as handed out") { store in
                let (one, two) = (try await store.open(), try await store.open())
                let ids = try await push(["1", "2", "3", "4", "5"], to: "q", one)
                let clock = ManualWallClock()
                let claims = ordered(one, clock: clock)
                let head = try await claimed(claims, "head")
                // Taken while the head is in flight, as an ordered replayer does: whatever a driver
                // hands out at once is the next entry in order.
                let early = claims.nextLeasedAhead(checkedWithin: .milliseconds(5))
                try await claims.complete(head)
                let second: QueueStoreEntry
                if let early { second = early } else { second = try await claimed(claims, "2") }
                try expectEqual(path(second), "2", "the entry after the head")
                try await claims.complete(second)
                // Another process deletes the next entry; once the age asked for has passed since
                // anything was checked, it is not handed out at once.
                try await two.deleteEntries(ids: [ids[2]])
                clock.advance(by: .milliseconds(6))
                let late = claims.nextLeasedAhead(checkedWithin: .milliseconds(5))
                try expect(late == nil, "an entry checked more than 5 ms ago was handed out at once: \(late.map(path) ?? "")")
                try expectEqual(path(try await claimed(claims, "after the deletion")), "4", "the next entry handed out")
                // What was handed out at once is not handed out again, and goes back at the end:
                // another replay takes it at once.
                let fifth = claims.nextLeasedAhead(checkedWithin: .seconds(60))
                if let fifth { try expectEqual(path(fifth), "5", "the entry handed out at once") }
                try expectEqual(try await drain(claims).map(path), fifth == nil ? ["5"] : [], "handed out after it")
                try await claims.finish()
                let after = ordered(two, clock: ManualWallClock())
                try expectEqual(path(try await claimed(after, "the next replay's first")), "4", "the next replay's first")
                try expectEqual(path(try await claimed(after, "the next replay's second")), "5", "the next replay's second")
                try await after.finish()
            },
            check("nothing is handed out at once past an entry given back, or on half a lease") { store in
                let database = try await store.open()
                try await push(["1", "2", "3"], to: "q", database)
                let clock = ManualWallClock()
                let claims = ordered(database, clock: clock)
                let first = try await claimed(claims, "1")
                try await claims.release(first, failure: nil, nextAttemptAt: nil)
                let early = claims.nextLeasedAhead(checkedWithin: .seconds(3600))
                try expect(early == nil, "handed out at once after the head went back: \(early.map(path) ?? "")")
                try expectEqual(path(try await claimed(claims, "1 again")), "1", "after a give-back")
                // More than half of the 60-second lease gone: nothing is handed out on it.
                clock.advance(by: .seconds(36))
                let late = claims.nextLeasedAhead(checkedWithin: .seconds(3600))
                try expect(late == nil, "handed out at once with less than half a lease left: \(late.map(path) ?? "")")
                try await claims.finish()
            },
            check("in order, an entry given back untouched is the next one handed out") { store in
                let database = try await store.open()
                try await push((1...10).map(String.init), to: "q", database)
                let claims = ordered(database, clock: ManualWallClock())
                try await claims.complete(try await claimed(claims, "1"))
                let second = try await claimed(claims, "2")
                try await claims.release(second, failure: nil, nextAttemptAt: nil)
                try expectEqual(path(try await claimed(claims, "2 again")), "2", "after a give-back")
                try await claims.finish()
            },
            check("concurrent claims hand out no entry deleted or set aside after it was leased") { store in
                let (one, two) = (try await store.open(), try await store.open())
                let ids = try await push((1...30).map(String.init), to: "q", one)
                let claims = one.claims(
                    queueName: "q", order: .concurrent(maxInFlight: 4), owner: .current(), leaseDuration: .seconds(60),
                    clock: ManualWallClock())
                let first = try await claimed(claims, "first")
                // Another process removes every other entry but the last, whatever the claims hold.
                let others = ids.filter { $0 != first.id && $0 != ids.last }
                try await two.deleteEntries(ids: others.enumerated().filter { $0.offset % 2 == 0 }.map(\.element))
                try await two.setAsideEntries(
                    queueName: "q", ids: others.enumerated().filter { $0.offset % 2 == 1 }.map(\.element),
                    failure: ReplayFailure(kind: .setAside, message: "by hand"))
                try await claims.complete(first)
                let rest = try await drain(claims).map(\.id)
                try await claims.finish()
                try expectEqual(rest, [ids[29]], "handed out after the removals")
            },
            check("writes complete in a cancelled task") { store in
                let database = try await store.open()
                try await push(["1", "2"], to: "q", database)
                let claims = ordered(database, clock: ManualWallClock())
                let head = try await claimed(claims, "head")
                // A child task cancelled before it runs: every call below happens with cancellation set.
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.cancelAll()
                    group.addTask {
                        try expect(Task.isCancelled, "the child task runs cancelled")
                        try await claims.release(
                            head, failure: ReplayFailure(kind: .noResponse, message: "offline"), nextAttemptAt: nil)
                        try await claims.finish()
                        _ = try await database.pushEntry(entry("3"), queueName: "q", at: .tail, registeringSyncTag: nil)
                    }
                    try await group.waitForAll()
                }
                try expectEqual(try await paths("q", database), ["1", "2", "3"], "the push")
                try expectEqual(try await database.entry(id: head.id)?.attempts, 1, "the release")
                let other = ordered(try await store.open(), clock: ManualWallClock())
                try expectEqual(path(try await claimed(other, "after finish")), "1", "finish gave everything back")
                try await other.finish()
            },
            check("two instances on one store share its identity") { store in
                let (one, two) = (try await store.open(), try await store.open())
                try expectEqual(one.identity, two.identity, "identity")
                try expect(!one.identity.isEmpty, "an identity")
            },
        ]
    }

    /// A process id no process of this host has.
    static func deadProcessID() -> Int32 {
        var pid: Int32 = 4_000_000
        while kill(pid, 0) == 0 || errno != ESRCH { pid += 1 }
        return pid
    }
}
