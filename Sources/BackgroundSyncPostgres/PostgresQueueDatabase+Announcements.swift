import BackgroundSync
import Foundation
import PostgresNIO

extension PostgresQueueDatabase {
    /// What the announcer has to send, and what it sent.
    struct Announcements {
        /// Queues pushed to and not announced yet.
        var unannounced: Set<String> = []
        /// How many announcements were asked (one per queue per push statement), and how many of
        /// the first of them a round that went through covered.
        var asked = 0
        var announced = 0
        /// A push was started, answered or not: one whose answer never came (the store stopping
        /// cut it off) may have stored its entry without asking for an announcement.
        var pushStarted = false
        /// How many rounds were sent, with or without success, and the shortest time between two.
        var rounds = 0
        var shortestGap: Duration?
    }

    /// Tells the other instances that a queue was pushed to, once the push committed (or failed
    /// with its outcome unknown, see ``announceFailedPush(_:_:)``): the
    /// announcer sends the `NOTIFY`s apart from the pushes, on the session's connection, a burst of
    /// pushes making one notification per queue. A `NOTIFY` in the push's own transaction would
    /// hold PostgreSQL's notification lock through that commit's flush, and concurrent pushes would
    /// wait for each other. A push made while the session is down is announced once the next session
    /// listens; one made by a process that dies before announcing it is left to the others' poll.
    func announcePush(_ queueName: String) {
        announcing.withLock { state in
            state.unannounced.insert(queueName)
            state.asked += 1
        }
        announcements.continuation.yield()
    }

    /// Announces a push whose statement failed with its outcome unknown (see
    /// ``outcomeIsUnknown(_:)``): it may have stored its entry, and a notification for nothing only
    /// costs the other instances a look.
    func announceFailedPush(_ queueName: String, _ error: any Error) {
        if Self.outcomeIsUnknown(error) { announcePush(queueName) }
    }

    /// Runs a statement that pushes to `queueNames` (or makes their entries pending); when it
    /// fails, announces them as ``announceFailedPush(_:_:)`` does, and rethrows.
    func announcingFailure<T>(of queueNames: some Collection<String>, _ statement: () async throws -> T) async throws -> T {
        do {
            return try await statement()
        } catch {
            for name in Set(queueNames) { announceFailedPush(name, error) }
            throw error
        }
    }

    /// Whether a statement in a transaction of its own that failed with `error` may still have
    /// committed: the connection closed or broke (PostgresNIO's own errors), the server ended the
    /// session (SQLSTATE 57P01 to 57P03) or reported a connection failure (class 08), or an error
    /// not from PostgresNIO (the answer cut off and not found again; also a connection found
    /// closed before the statement went out, counted as unknown to be safe). Any other error the
    /// server sent means the statement was rolled back.
    static func outcomeIsUnknown(_ error: any Error) -> Bool {
        guard let error = error as? PSQLError else { return true }
        guard let state = error.serverInfo?[.sqlState] else { return true }
        return state.hasPrefix("08") || ["57P01", "57P02", "57P03"].contains(state)
    }

    /// The shortest time between two rounds of announcements (see ``announce()``): 5 ms, changed
    /// only by tests.
    @_spi(Testing) public var announcementInterval: Duration {
        get { announcementIntervalValue.withLock { $0 } }
        set { announcementIntervalValue.withLock { $0 = newValue } }
    }

    /// The announcer's progress, for tests: announcements asked (one per queue per push
    /// statement), how many of them a round that went through covered, its rounds, and the
    /// shortest time between two rounds.
    @_spi(Testing) public var announcerProgress: (asked: Int, announced: Int, rounds: Int, shortestGap: Duration?) {
        announcing.withLock { ($0.asked, $0.announced, $0.rounds, $0.shortestGap) }
    }

    /// Sends the announcements, until cancelled.
    ///
    /// A round of announcements goes out as soon as a push asks for one, unless the previous
    /// round started less than ``announcementInterval`` before: then it waits for the rest of
    /// that time (and for the previous round's statements to end), and carries every queue pushed
    /// to meanwhile. So the first push after a quiet spell wakes the other instances at once, a
    /// later push about that long after its commit, and a producer pushing back to back sends one
    /// notification per queue per interval instead of one per push: each costs a statement on the
    /// session's connection and wakes every listening instance, and PostgreSQL serializes the
    /// commits of transactions that notify. What waits when the store stops is announced by
    /// ``announceBeforeStopping()``.
    ///
    /// PostgresNIO loses a query written to a connection that has just closed: its result never
    /// comes. So a notification is checked and written on the connection's event loop (open there,
    /// its handler fails the query if it closes; see ``ensureOpen(_:)``), and its result is awaited
    /// for at most 5 seconds.
    func announce() async {
        var lastRound: ContinuousClock.Instant?
        // Rounds that failed in a row on a live session (PostgreSQL refusing the notification: a
        // standby, a full notification queue): each waits twice as long as the one before, up to
        // 2 seconds, until one goes through.
        var failures = 0
        for await _ in announcements.stream {
            if let lastRound {
                let pause = failures == 0 ? announcementInterval : min(announcementInterval * (1 << min(failures, 12)), .seconds(2))
                let ready = lastRound + pause
                if ContinuousClock.now < ready { try? await Task.sleep(until: ready, clock: .continuous) }
            }
            // Stopping: the session closes with the store (see ``announceBeforeStopping()``).
            if Task.isCancelled { break }
            let now = ContinuousClock.now
            let (names, asked) = announcing.withLock { state -> (Set<String>, Int) in
                defer { state.unannounced = [] }
                guard !state.unannounced.isEmpty else { return ([], 0) }
                state.rounds += 1
                if let lastRound { state.shortestGap = min(state.shortestGap ?? now - lastRound, now - lastRound) }
                return (state.unannounced, state.asked)
            }
            guard !names.isEmpty else { continue }
            lastRound = now
            // Many queues at once: one notification for all of them.
            let payloads = names.count > 8 ? [""] : names.map(Self.notifyPayload)
            var sent = true
            for payload in payloads where !(await notify(payload)) {
                // No session now: the names wait for the next one (it sends them as it listens) or
                // the next push. A session that failed the statement: a later round tries again.
                announcing.withLock { $0.unannounced.formUnion(names) }
                if session.withLock({ $0 != nil }) {
                    failures += 1
                    if failures == 1 {
                        logger.info("cannot notify the other instances of pushes; trying again, less and less often")
                    }
                    announcements.continuation.yield()
                }
                sent = false
                break
            }
            if sent {
                failures = 0
                announcing.withLock { $0.announced = max($0.announced, asked) }
            }
        }
    }

    /// Sends one notification on the session's connection: `true` once PostgreSQL took it, `false`
    /// when there is no session, the statement failed, or 5 seconds passed.
    private func notify(_ payload: String) async -> Bool {
        guard let connection = session.withLock({ $0?.connection }) else { return false }
        let eventLoop = connection.eventLoop
        let query = eventLoop.flatSubmit { [channel, identity] () -> EventLoopFuture<PostgresQueryResult> in
            guard !connection.isClosed else {
                return eventLoop.makeFailedFuture(
                    BackgroundSyncError(.storeUnreachable, "the connection to the PostgreSQL store \(identity) closed"))
            }
            return connection.query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)", [PostgresData(string: channel), PostgresData(string: payload)])
        }
        let sent = Locked<Bool?>(nil)
        return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let finish: @Sendable (Bool) -> Void = { ok in
                if sent.withLock({ outcome in defer { outcome = outcome ?? ok }; return outcome == nil }) {
                    continuation.resume(returning: ok)
                }
            }
            let timer = eventLoop.scheduleTask(in: .seconds(5)) { finish(false) }
            query.whenComplete { result in
                timer.cancel()
                if case .success = result { finish(true) } else { finish(false) }
            }
        }
    }

    /// Notes that a push (or a requeue) starts (see ``Announcements/pushStarted``).
    func notePushStarted() {
        announcing.withLock { $0.pushStarted = true }
    }

    /// For an instance about to stop (``withDatabase(_:logger:_:)`` once its body returned,
    /// ``run()`` on a graceful shutdown): if it started a push, one more notification for every
    /// queue, so that a push whose own notification the stop would cut off (or whose answer it
    /// cut off) still wakes the other instances (an idle `SyncService` that does not poll would
    /// otherwise learn of it only with a later push). Sent again, up to twice, when a push asked
    /// for an announcement meanwhile.
    func announceBeforeStopping() async {
        // No push started: this instance stored no entry.
        guard announcing.withLock({ $0.pushStarted }) else { return }
        for _ in 0..<3 {
            let asked = announcing.withLock { $0.asked }
            guard await notify("") else { return }
            let more = announcing.withLock { state -> Bool in
                state.announced = max(state.announced, asked)
                return state.asked > asked
            }
            if !more { return }
        }
    }

    /// Returns once no statement runs on a pooled connection, or after `limit`.
    func waitForStatementsToEnd(atMost limit: Duration) async {
        let deadline = ContinuousClock.now + limit
        while poolUse.withLock({ $0.leased }) > 0, ContinuousClock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }
}
