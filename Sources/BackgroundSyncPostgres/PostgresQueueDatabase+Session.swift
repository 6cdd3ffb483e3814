import BackgroundSync
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// The session: one connection of its own per instance, holding the advisory lock that this
/// instance's leases name, listening for pushes, checked, and connected again when lost.
extension PostgresQueueDatabase {
    /// Connects a session and takes its lock under a new key: leases written under an earlier
    /// session's key (one lost with its connection) are free for every worker from now on, this one
    /// included, rather than held again by this one.
    func openSession() async throws -> PostgresConnection {
        let connection = try await PostgresConnection.connect(configuration: connectionConfiguration, id: 0, logger: logger)
        do {
            let key = Int64.random(in: 1..<(1 << 62))
            let locked = try await onLoop(of: connection) {
                try await rows(connection, "SELECT pg_try_advisory_lock($1)", binds(key))
            }
            guard try locked.first?.decode(Bool.self) == true else {
                throw BackgroundSyncError(.storage, "the session lock \(key) is taken")
            }
            session.withLock { $0 = (key, connection) }
            return connection
        } catch {
            try? await connection.close()
            throw error
        }
    }

    /// The key of this instance's session lock while the session holds it, `nil` while it is lost.
    var sessionKey: Int64? { session.withLock { $0?.key } }

    /// Ends the session under `key`, if it is still the current one, because the server no longer
    /// holds its lock (it ended the session, and the connection has not noticed): closing the
    /// connection ends its listening, and ``keepSession(_:)`` connects a new session.
    func dropSession(key: Int64) {
        let lost = session.withLock { current -> PostgresConnection? in
            guard let connection = current?.connection, current?.key == key else { return nil }
            current = nil
            return connection
        }
        guard let lost else { return }
        logger.info("the PostgreSQL server no longer holds this instance's session lock; connecting again")
        _ = lost.close() as EventLoopFuture<Void>
    }

    /// Returns once `connection` failed a check (see ``check(_:failing:)``), every
    /// ``Configuration/sessionCheckInterval`` — having dropped the session and closed the
    /// connection, which ends its listening (`silent` is set when the check went unanswered); or
    /// when cancelled.
    private func checkSession(_ connection: PostgresConnection, silent: Locked<Bool>) async {
        while true {
            do { try await Task.sleep(for: configuration.sessionCheckInterval) } catch { return }
            let outcome = await check(connection) { outcome in
                // No lease may name this session's key from now on.
                if outcome == .unanswered { silent.withLock { $0 = true } }
                session.withLock { current in
                    if current?.connection === connection { current = nil }
                }
            }
            if Task.isCancelled || outcome != .answered { return }
        }
    }

    /// What a ``check(_:failing:)`` found.
    enum ConnectionCheck {
        case answered, refused, unanswered
    }

    /// Checks `connection` with a `SELECT 1`, answered within a third of
    /// ``Configuration/sessionCheckInterval`` (at least 5 seconds), refused, or unanswered. A
    /// connection that fails the check is closed, after `failing` ran (unless the caller was
    /// cancelled, which also ends the check and closes the connection): a connection dropped on
    /// the way without a word (a NAT or a load balancer ending an idle flow) would otherwise keep
    /// a statement waiting for its answer for many minutes. The unanswered `SELECT 1` ends with
    /// the connection.
    func check(_ connection: PostgresConnection, failing: (ConnectionCheck) -> Void = { _ in }) async -> ConnectionCheck {
        let patience = max(configuration.sessionCheckInterval / 3, .seconds(5))
        return await withTaskGroup(of: ConnectionCheck.self) { group in
            group.addTask {
                let answered = try? await self.onLoop(of: connection) {
                    try self.ensureOpen(connection)
                    return try await self.rows(connection, "SELECT 1").count
                }
                return answered == nil ? .refused : .answered
            }
            group.addTask {
                try? await Task.sleep(for: patience)
                return .unanswered
            }
            let first = await group.next() ?? .unanswered
            if first != .answered {
                if !Task.isCancelled { failing(first) }
                _ = connection.close() as EventLoopFuture<Void>
            }
            group.cancelAll()
            return first
        }
    }

    /// Checks a pooled connection (see ``check(_:failing:)``) once no statement succeeded on one
    /// for ``Configuration/sessionCheckInterval``, until cancelled; a connection that fails its
    /// check is closed. The pool keeps its first connection open and lends it first whenever it is
    /// free, so this is the one checked; the others close once unused for that interval (see
    /// `Configuration.clientConfiguration()`). No check is made while statements run on every
    /// connection the store knows open: a check would take another one. A pool of one connection keeps none
    /// open (its connection closes once unused for the interval), and has none checked.
    func keepPoolAlive() async {
        // Returning would end the store's parts: a pool with nothing to check waits until cancelled.
        guard configuration.maximumConnections > 1 else {
            while (try? await Task.sleep(for: .seconds(3_600))) != nil {}
            return
        }
        let interval = configuration.sessionCheckInterval
        var due = ContinuousClock.now + interval
        while true {
            do { try await Task.sleep(until: due, clock: .continuous) } catch { return }
            let (lastSuccess, busy) = poolUse.withLock { ($0.lastSuccess, $0.leased > 0 && $0.leased >= $0.open.count) }
            if let lastSuccess, lastSuccess + interval > .now {
                due = lastSuccess + interval
                continue
            }
            due = .now + interval
            if busy { continue }
            // While the server is down, this waits for a connection like any statement; a failed
            // check is counted no success.
            _ = try? await leasing { connection in
                let outcome = await self.check(connection) { outcome in
                    self.logger.info(
                        "closing a pooled PostgreSQL connection that failed a check", metadata: ["check": "\(outcome)"])
                }
                guard outcome == .answered else {
                    throw BackgroundSyncError(.storeUnreachable, "a pooled connection failed its check")
                }
            }
        }
    }

    /// Listens for pushes on the session's connection; when it is lost, connects a new session
    /// (after a short pause, growing to 5 seconds) until cancelled.
    func keepSession(_ first: PostgresConnection) async {
        var connection: PostgresConnection? = first
        var pause = Duration.milliseconds(100)
        while !Task.isCancelled {
            if let current = connection {
                // The pause before the next session grows until one listens again.
                let listened = Locked(false)
                // Set by the check that closes a connection whose server stopped answering.
                let silent = Locked(false)
                do {
                    // Cancelling closes the connection, which ends the listening whatever it waits for.
                    try await withTaskCancellationHandler {
                        // The listening ends when the connection does; the check closes a connection
                        // whose server stopped answering.
                        try await withThrowingTaskGroup(of: Void.self) { group in
                            group.addTask { [self] in
                                try await onLoop(of: current) {
                                    try ensureOpen(current)
                                    try await current.listen(on: channel) { notifications in
                                        listened.withLock { $0 = true }
                                        // Pushes made while no session listened were missed: wake the
                                        // listeners once, and send the announcements kept meanwhile.
                                        broadcast("")
                                        announcements.continuation.yield()
                                        for try await notification in notifications {
                                            broadcast(notification.payload)
                                        }
                                    }
                                }
                            }
                            group.addTask { [self] in await checkSession(current, silent: silent) }
                            try await group.next()
                            group.cancelAll()
                        }
                    } onCancel: {
                        // The announcer sends nothing more on it.
                        session.withLock { $0 = nil }
                        _ = current.close() as EventLoopFuture<Void>
                    }
                } catch {
                    if !Task.isCancelled && !silent.withLock({ $0 }) {
                        logger.info("lost the PostgreSQL session; connecting again", metadata: ["error": "\(describe(error))"])
                    }
                }
                if silent.withLock({ $0 }) {
                    logger.info("the PostgreSQL session did not answer a check in time; connecting again")
                }
                session.withLock { $0 = nil }
                try? await current.close()
                connection = nil
                if listened.withLock({ $0 }) { pause = .milliseconds(100) }
            }
            try? await Task.sleep(for: pause)
            pause = min(pause * 2, .seconds(5))
            // Cancelled (the store stops): no new session. PostgresNIO's connect started in a
            // cancelled task may never finish.
            if Task.isCancelled { break }
            do {
                connection = try await openSession()
            } catch {
                if !Task.isCancelled {
                    logger.info("cannot open the PostgreSQL session", metadata: ["error": "\(describe(error))"])
                }
            }
        }
        session.withLock { $0 = nil }
        try? await connection?.close()
    }
}
