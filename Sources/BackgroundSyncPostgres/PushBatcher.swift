import BackgroundSync
import Foundation
import PostgresNIO

/// Shares statements and commits between concurrent pushes of one store instance: while a push is
/// being written, the pushes that arrive wait, and the next write takes them all in one statement
/// (``PostgresQueueDatabase/PushBatch``), one commit. Each caller still returns only after *its*
/// entry is committed, so durability is unchanged; a lone push is written alone, with no wait, in
/// its caller's task while the store is busy and well (see `pushDirectly`), else in ``run()``'s
/// task. Most of a push's cost on the server is the statement's (the registration lock, the
/// queue's count, the size read, the commit), not the row's, so N pushes in one statement cost
/// little more than one.
///
/// Only pushes at the tail of a queue this instance knows are batched, and only those whose entry
/// fits the statement's JSON (``BatchedPushRow/fits(_:)``); the others are written apart, as
/// before. A batch the server refuses for its data (an entry it cannot store) is written again one
/// push per statement, so that the bad one fails alone. A batch whose outcome is unknown (the
/// connection was lost) fails every push in it, as a lone push would: writing them again could
/// store them twice. Its queues are announced all the same (see
/// ``PostgresQueueDatabase/announceFailedPush(_:_:)``), as a lone push's is. The pushes of an
/// instance are written one batch at a time: a batch that waits for a lock (a tag being
/// unregistered, a queue's count row another transaction updates) holds the instance's other
/// pushes until it is done.
final class PushBatcher: Sendable {
    /// A push waiting to be written.
    struct Push: Sendable {
        let entry: UnidentifiedQueueStoreEntry
        let queueName: String
        let syncTag: String?
        /// When the push was asked for: the time a registration it makes is stamped with.
        let at: Double
    }

    private struct Waiter {
        var push: Push
        var continuation: UnsafeContinuation<PushedEntry, any Error>
    }

    private struct State {
        var waiting: [Waiter] = []
        /// A drain is submitted or running.
        var draining = false
        /// When the last batch of several pushes was taken: pushes are contending.
        var lastSharedBatch: ContinuousClock.Instant?
    }

    /// How long after a batch of several pushes a lone push still goes through a drain (see
    /// ``claimIdle()``).
    static let contentionMemory = Duration.milliseconds(50)

    private let state = Locked(State())
    /// The most pushes one statement takes.
    static let maxBatch = 64
    /// The largest body a batched push carries (base64 in the statement's JSON); larger ones go
    /// alone, as binary parameters.
    static let maxBodySize = 64 << 10

    /// How many pushes wait.
    fileprivate var waitingCount: Int { state.withLock { $0.waiting.count } }

    /// Adds a push; returns whether the caller must start a drain (none was under way).
    fileprivate func add(_ push: Push, _ continuation: UnsafeContinuation<PushedEntry, any Error>) -> Bool {
        state.withLock { state in
            state.waiting.append(Waiter(push: push, continuation: continuation))
            guard !state.draining else { return false }
            state.draining = true
            return true
        }
    }

    /// The next pushes to write, oldest first; `nil`, and no drain under way anymore, when none wait.
    fileprivate func next() -> [(Push, UnsafeContinuation<PushedEntry, any Error>)]? {
        state.withLock { state in
            guard !state.waiting.isEmpty else {
                state.draining = false
                return nil
            }
            let batch = state.waiting.prefix(Self.maxBatch).map { ($0.push, $0.continuation) }
            state.waiting.removeFirst(batch.count)
            if batch.count > 1 { state.lastSharedBatch = .now }
            return batch
        }
    }

    /// Takes the drain role for a push written at once by its caller (see
    /// ``PostgresQueueDatabase/pushDirectly(_:)``) when no drain is under way, no push waits, and
    /// no batch of several pushes was taken within ``contentionMemory`` (contending pushes gather
    /// in the drain, see `drainPushes`; a lone push written apart among them would split their
    /// batches): pushes that arrive meanwhile wait for it. Returns whether it was taken.
    fileprivate func claimIdle() -> Bool {
        state.withLock { state in
            guard Self.isIdle(state) else { return false }
            state.draining = true
            return true
        }
    }

    /// Whether ``claimIdle()`` would take the role now: a push that finds it would not leases no
    /// connection for it (under contention, every push would lease one only to give it back).
    fileprivate var looksIdle: Bool { state.withLock { Self.isIdle($0) } }

    private static func isIdle(_ state: State) -> Bool {
        guard !state.draining, state.waiting.isEmpty else { return false }
        guard let shared = state.lastSharedBatch else { return true }
        return ContinuousClock.now - shared >= contentionMemory
    }

    /// Gives back the role ``claimIdle()`` took; returns whether pushes wait, and so the caller
    /// must start a drain for them (the role stays taken for it).
    fileprivate func releaseClaim() -> Bool {
        state.withLock { state in
            if state.waiting.isEmpty { state.draining = false }
            return state.draining
        }
    }

    /// Fails every waiting push (the store is not running) and ends the drain.
    fileprivate func failAll(_ error: BackgroundSyncError) {
        let waiters = state.withLock { state in
            defer {
                state.waiting = []
                state.draining = false
            }
            return state.waiting
        }
        for waiter in waiters { waiter.continuation.resume(throwing: error) }
    }
}

/// An entry pushed in a ``PostgresQueueDatabase/PushBatch``: its queue (`q`), sync tag (`t`) and
/// content, as a JSON object whose keys are the entry table's columns (`nil` fields are left out
/// and read as NULL; bytes in base64). Written by hand: `JSONEncoder` would cost more than the
/// rest of a push's work on the client.
enum BatchedPushRow {
    /// The columns `jsonb_to_record` reads, with their types.
    static let recordColumns = """
        q text, t text, url text, method text, headers text, body text, timeout_interval double precision,
        cache_policy bigint, handles_cookies boolean, allows_cellular boolean, main_document_url text,
        queued_at double precision, metadata text, idempotency_key text, sealed_secrets text, record_key text,
        attempts bigint, next_attempt_at double precision, last_failure_kind text, last_status bigint,
        last_error text, last_response_excerpt text
        """

    /// The values of ``PostgresQueueDatabase/contentColumns``, in order, from those columns.
    static let contentExpressions = """
        url, method, headers, decode(body, 'base64'), timeout_interval, cache_policy, handles_cookies,
        allows_cellular, main_document_url, queued_at, metadata, idempotency_key, decode(sealed_secrets, 'base64'),
        record_key, attempts, next_attempt_at, last_failure_kind, last_status, last_error,
        decode(last_response_excerpt, 'base64')
        """

    /// Whether an entry can go in a batch: its body is at most ``PushBatcher/maxBodySize``, its
    /// times are finite numbers, and its text has no NUL character (PostgreSQL's text refuses it;
    /// such an entry fails alone, with the server's error).
    static func fits(_ entry: UnidentifiedQueueStoreEntry) -> Bool {
        let data = entry.requestData
        func finite(_ time: Double?) -> Bool { time?.isFinite ?? true }
        func withoutNUL(_ text: String?) -> Bool { !(text?.utf8.contains(0) ?? false) }
        return (data.body?.count ?? 0) <= PushBatcher.maxBodySize
            && finite(data.timeoutInterval) && finite(entry.timestamp.timeIntervalSince1970)
            && finite(entry.nextAttemptAt?.timeIntervalSince1970)
            && withoutNUL(data.url) && withoutNUL(data.method) && withoutNUL(data.mainDocumentURL)
            && withoutNUL(entry.idempotencyKey) && withoutNUL(entry.recordKey) && withoutNUL(entry.lastFailure?.message)
    }

    /// The JSON array of the entries of `pushes` (each one that ``fits(_:)``).
    static func json(_ pushes: [PushBatcher.Push]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(pushes.reduce(2) { size, push in
            size + 600 + push.entry.requestData.url.utf8.count + (push.entry.requestData.body?.count ?? 0) * 4 / 3
        })
        out.append(UInt8(ascii: "["))
        for (index, push) in pushes.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            append(push.entry, queueName: push.queueName, syncTag: push.syncTag, to: &out)
        }
        out.append(UInt8(ascii: "]"))
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the JSON object of an entry pushed to `queueName`, in UTF-8.
    private static func append(_ entry: UnidentifiedQueueStoreEntry, queueName: String, syncTag: String?, to out: inout [UInt8]) {
        let data = entry.requestData
        out.append(UInt8(ascii: "{"))
        var first = true
        func key(_ name: StaticString) {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            out.append(UInt8(ascii: "\""))
            name.withUTF8Buffer { out.append(contentsOf: $0) }
            out.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        }
        func string(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            key(name)
            FlatJSON.appendString(value, to: &out)
        }
        func bytes(_ name: StaticString, _ value: Data?) {
            guard let value else { return }
            key(name)
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: value.base64EncodedData())
            out.append(UInt8(ascii: "\""))
        }
        func number(_ name: StaticString, _ value: (some LosslessStringConvertible)?) {
            guard let value else { return }
            key(name)
            out.append(contentsOf: value.description.utf8)  // a finite Double's description is the shortest that reads back exactly
        }
        let failure = entry.lastFailure
        string("q", queueName)
        string("t", syncTag)
        string("url", data.url)
        string("method", data.method)
        string("headers", FlatJSON.encode(data.headers))
        bytes("body", data.body)
        number("timeout_interval", data.timeoutInterval)
        number("cache_policy", Int64(data.cachePolicy))
        number("handles_cookies", data.httpShouldHandleCookies)
        number("allows_cellular", data.allowsCellularAccess)
        string("main_document_url", data.mainDocumentURL)
        number("queued_at", entry.timestamp.timeIntervalSince1970)
        string("metadata", entry.metadata.map(FlatJSON.encode))
        string("idempotency_key", entry.idempotencyKey)
        bytes("sealed_secrets", entry.sealedSecrets)
        string("record_key", entry.recordKey)
        number("attempts", Int64(entry.attempts))
        number("next_attempt_at", entry.nextAttemptAt?.timeIntervalSince1970)
        string("last_failure_kind", failure?.kind.rawValue)
        number("last_status", failure?.status.map(Int64.init))
        string("last_error", failure?.message)
        bytes("last_response_excerpt", failure?.responseExcerpt)
        out.append(UInt8(ascii: "}"))
    }
}

extension PostgresQueueDatabase {
    /// How many pushes wait for the batcher's next statement, for tests.
    @_spi(Testing) public var waitingPushes: Int { pushBatcher.waitingCount }

    /// Writes a push at the tail of a known queue through ``PushBatcher`` (one that
    /// ``BatchedPushRow/fits(_:)``).
    func pushBatched(_ push: PushBatcher.Push) async throws -> PushedEntry {
        try await waitUntilReady()
        if !Task.isCancelled, pushBatcher.looksIdle, poolUse.withLock({ $0.hasIdleConnection }) {
            let outcome = await pushDirectly(push)
            switch outcome {
            case .written(let entry):
                directPushes.withLock { $0.written += 1 }
                return entry
            case .failed(let error):
                directPushes.withLock { $0.failed += 1 }
                throw error
            case .notSent:
                directPushes.withLock { $0.notSent += 1 }
            }
        }
        return try await withUnsafeThrowingContinuation { continuation in
            guard pushBatcher.add(push, continuation) else { return }
            submit({ await self.drainPushes() }, fail: { self.pushBatcher.failAll($0) })
        }
    }

    /// Writes the waiting pushes, a batch at a time, until none wait. Runs in ``run()``'s task.
    ///
    /// Under contention it gathers, as PostgreSQL's `commit_delay` does: after a batch of several
    /// pushes, the next one waits for as many (the producers of the last batch are the likeliest
    /// next ones) or for as long as the last batch took, at most 2 ms, whichever comes first.
    /// Without it, the producers come back while the next batch is written, and split into
    /// alternating part-size batches.
    private func drainPushes() async {
        var last: (count: Int, took: Duration) = (1, .zero)
        while true {
            // The store is stopping: what waits was not written, and nothing more will be.
            if Task.isCancelled {
                pushBatcher.failAll(BackgroundSyncError(.storage, "the PostgreSQL store \(identity) is not running"))
                return
            }
            if last.count > 1 {
                let deadline = ContinuousClock.now + min(last.took, .milliseconds(2))
                while pushBatcher.waitingCount < last.count, ContinuousClock.now < deadline, !Task.isCancelled {
                    try? await Task.sleep(for: .microseconds(100))
                }
            }
            guard let batch = pushBatcher.next() else { return }
            let start = ContinuousClock.now
            if batch.count == 1, let (push, continuation) = batch.first {
                continuation.resume(with: await Result { try await pushAlone(push) })
            } else {
                await writeBatch(batch)
            }
            last = (batch.count, ContinuousClock.now - start)
        }
    }

    /// What ``pushDirectly(_:)`` did.
    enum DirectPush {
        case written(PushedEntry)
        case failed(any Error)
        /// Nothing was written: the push is to be made the usual way.
        case notSent
    }

    /// A lone push written in its caller's task, with no hop to ``run()``'s task and no timer.
    ///
    /// Tried only while pushes do not contend (the batcher looks idle, see
    /// ``PushBatcher/claimIdle()``) and the store is busy and well (``PoolUse/hasIdleConnection``:
    /// a pooled statement succeeded within the last second, and a connection the store knows to be
    /// open is idle), so that a connection most likely comes at once; a store whose connections closed
    /// (the server went away) writes its pushes the usual way, whose wait for a connection gives
    /// up after its patience. Its own wait for a connection has no time limit of its own: it ends
    /// when the pool gives it a connection (one released, or made), fails it, or the caller is
    /// cancelled; so a server that goes away between the look at the pool and the lease keeps
    /// that one push waiting until it is back or its caller gives up. It takes the
    /// batcher's drain role only once it has a connection, so the pushes that arrive meanwhile
    /// never wait for that wait, only for its statement.
    ///
    /// Nothing is written, and the push is made the usual way (which completes for a cancelled
    /// caller), when the caller's cancellation ends the wait for a connection or comes before the
    /// statement, when a drain is under way, when the connection closed, or on a serialization
    /// failure or deadlock (rolled back). Once written, the push completes whatever happens to its
    /// caller: a cancellation that cuts its answer off (possible only while the answer is still
    /// arriving) is followed by a question on the same connection, see ``pushOutcome(of:on:)``.
    private func pushDirectly(_ push: PushBatcher.Push) async -> DirectPush {
        let bindings = Self.pushBindings(push.entry, queueName: push.queueName, syncTag: push.syncTag, at: push.at)
        let progress = Locked<(claimed: Bool, written: Bool)>((false, false))
        defer {
            if progress.withLock({ $0.claimed }), pushBatcher.releaseClaim() {
                submit({ await self.drainPushes() }, fail: { self.pushBatcher.failAll($0) })
            }
        }
        do {
            let result = try await leasing { connection in
                try await self.onLoop(of: connection) { () -> [PostgresRow]? in
                    guard !Task.isCancelled, self.pushBatcher.claimIdle() else { return nil }
                    progress.withLock { $0.claimed = true }
                    try self.ensureOpen(connection)
                    progress.withLock { $0.written = true }
                    let answer = try await connection.execute(Prepared<PushAtTail>(bindings: bindings), logger: self.logger)
                    do {
                        var rows: [PostgresRow] = []
                        for try await row in answer { rows.append(row) }
                        return rows
                    } catch is CancellationError {
                        return try await self.pushOutcome(of: push, on: connection)
                    }
                }
            }
            guard let result else { return .notSent }
            return .written(try pushed(result, queueName: push.queueName))
        } catch let error as PSQLError where Self.isRetryable(error) {
            return .notSent
        } catch {
            guard progress.withLock({ $0.written }) else { return .notSent }
            announceFailedPush(push.queueName, error)
            return .failed(mapError(error, action: "write to"))
        }
    }

    /// What became of a push whose answer its caller's cancellation cut off, asked on the same
    /// connection once the push's statement ended (PostgreSQL runs a connection's statements in
    /// turn), in a way the cancellation does not stop: the rows ``PushAtTail`` returns (the id,
    /// the size now), or `nil` when the push stored nothing. The entry is found by the position the
    /// push took (`currval` of the session: taking it is the statement's first step) in its
    /// queue. `nil` is also what an entry stored, replayed and deleted before this question would
    /// give: the push is then made again, and sent twice, with one `Idempotency-Key`.
    private func pushOutcome(of push: PushBatcher.Push, on connection: PostgresConnection) async throws -> [PostgresRow]? {
        let question = PostgresQuery(unsafeSQL: sql("""
            SELECT id, (SELECT coalesce(sum(pending), 0)::bigint FROM {s}.queue_count WHERE queue_name = $1)
            FROM {s}.entry WHERE position = currval('\(prefix)tail_position') AND queue_name = $1
            """), binds: binds(push.queueName))
        do {
            try ensureOpen(connection)
            let answer: EventLoopFuture<PostgresQueryResult> = connection.query(question, logger: logger)
            let rows = Array(try await answer.get().rows)
            return rows.isEmpty ? nil : rows
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "55000" {
            return nil  // `currval` before any `nextval` of the session: the push took no position
        } catch {
            throw BackgroundSyncError(
                .storage,
                "the push to \(push.queueName) was cancelled while the PostgreSQL store \(identity) answered, and what became of it cannot be known (\(describe(error))): the entry may be stored")
        }
    }

    /// One push in its own statement (``PushAtTail``).
    private func pushAlone(_ push: PushBatcher.Push) async throws -> PushedEntry {
        let bindings = Self.pushBindings(push.entry, queueName: push.queueName, syncTag: push.syncTag, at: push.at)
        let result = try await transaction("write to", singleStatement: true) { connection in
            try await self.announcingFailure(of: [push.queueName]) { try await self.rows(connection, PushAtTail.self, bindings) }
        }
        return try pushed(result, queueName: push.queueName)
    }

    /// Pushes in one statement; when the server refuses it, each alone.
    private func writeBatch(_ batch: [(PushBatcher.Push, UnsafeContinuation<PushedEntry, any Error>)]) async {
        let bindings = binds(BatchedPushRow.json(batch.map(\.0)), batch[0].0.at)
        let outcome: Result<[PostgresRow]?, any Error> = await Result {
            try await transaction("write to", singleStatement: true) { connection in
                do {
                    return try await self.announcingFailure(of: batch.map(\.0.queueName)) {
                        try await self.rows(connection, PushBatch.self, bindings)
                    }
                } catch let error as PSQLError where Self.wasRefused(error) {
                    return nil  // nothing was written
                }
            }
        }
        switch outcome {
        case .success(let written?):
            var entries: [Int: PushedEntry] = [:]
            var unreadable: (any Error)?
            for row in written {
                do {
                    let (place, id, size) = try row.decode((Int64, Int64, Int64).self)
                    entries[Int(place) - 1] = PushedEntry(id: id, size: Int(size))
                } catch {
                    unreadable = error
                }
            }
            for name in Set(batch.map(\.0.queueName)) { announcePush(name) }
            for (index, (_, continuation)) in batch.enumerated() {
                if let entry = entries[index] {
                    continuation.resume(returning: entry)
                } else {
                    // Committed with the others: pushing it again would store it twice.
                    continuation.resume(throwing: BackgroundSyncError(
                        .storage, "the entry was stored, but the PostgreSQL store \(identity) returned no readable id for it"
                            + (unreadable.map { ": \(describe($0))" } ?? "")))
                }
            }
        case .success(nil):
            for (push, continuation) in batch {
                continuation.resume(with: await Result { try await pushAlone(push) })
            }
        case .failure(let error):
            for (_, continuation) in batch { continuation.resume(throwing: error) }
        }
    }

    /// Whether the server refused the statement for its data (SQLSTATE classes 22, data exception,
    /// and 23, integrity constraint violation): one of the entries, which alone will fail again.
    /// The statement, its own transaction, was rolled back.
    private static func wasRefused(_ error: PSQLError) -> Bool {
        guard let state = error.serverInfo?[.sqlState] else { return false }
        return state.hasPrefix("22") || state.hasPrefix("23")
    }
}
