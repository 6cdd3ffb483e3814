import BackgroundSync
import Foundation
import PostgresNIO
import _ConnectionPoolModule

extension PostgresQueueDatabase {
    // MARK: Access

    /// Runs `body` in a transaction on a pooled connection, in ``run()``'s task, so that it
    /// completes when the calling task is cancelled. A transaction that meets a serialization
    /// failure or a deadlock is tried again. `singleStatement: true` runs `body` (one statement)
    /// without `BEGIN` and `COMMIT`, as its own transaction: one round trip.
    @discardableResult
    func write<T: Sendable>(
        _ action: String, singleStatement: Bool = false,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await waitUntilReady()
        return try await withUnsafeThrowingContinuation { continuation in
            submit(
                { continuation.resume(with: await Result {
                        try await self.transaction(action, singleStatement: singleStatement, body)
                    }) },
                fail: { continuation.resume(throwing: $0) })
        }
    }

    /// Runs `body` in ``run()``'s task, or calls `fail` instead when the store is not running:
    /// exactly one of the two.
    func submit(_ body: @escaping @Sendable () async -> Void, fail: @escaping @Sendable (BackgroundSyncError) -> Void) {
        let job = unstarted.withLock { unstarted in
            defer { unstarted.nextID &+= 1 }
            let job = Job(id: unstarted.nextID, body: body, fail: fail)
            unstarted.jobs[job.id] = job
            return job
        }
        if case .terminated = jobInput.yield(job), unstarted.withLock({ $0.jobs.removeValue(forKey: job.id) }) != nil {
            job.fail(BackgroundSyncError(.storage, "the PostgreSQL store \(identity) is not running"))
        }
    }

    /// Runs `body` on a pooled connection in the calling task. A task cancelled while it waits for
    /// a connection gets `CancellationError`; once `body` has one, its statements run to their end.
    func read<T: Sendable>(_ action: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await waitUntilReady()
        do {
            return try await pooled(action, body)
        } catch let error as BackgroundSyncError {
            throw error
        } catch let error as CancellationError {
            throw error
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw mapError(error, action: action)
        }
    }

    /// Runs `body` on a connection of the pool. PostgresNIO's pool waits for a connection as long
    /// as it takes (while the server is down, or out of connections): the wait is given up after
    /// three connection timeouts, with ``BackgroundSyncError/Code/storeUnreachable``. Once `body`
    /// has a connection it runs to its end.
    fileprivate func pooled<T: Sendable>(
        _ action: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        // Whether a connection came (then `body` runs to its end), or the wait was given up first
        // (then a connection that comes runs nothing): decided once, under one lock.
        let wait = Locked<(leased: Bool, timedOut: Bool)>((false, false))
        let patience = configuration.connectTimeout * 3
        return try await withThrowingTaskGroup(of: PooledEnding<T>.self) { group in
            group.addTask {
                .value(try await self.leasing { connection in
                    let proceed = wait.withLock { wait -> Bool in
                        if !wait.timedOut { wait.leased = true }
                        return wait.leased
                    }
                    guard proceed else { throw CancellationError() }
                    return try await self.onLoop(of: connection) { try await body(connection) }
                })
            }
            group.addTask {
                // Cancelled (and then returns at once) when `body` is done first. Untimed once the
                // store stops: its pool then ends the wait for a connection.
                await self.deadlines.wait(until: .now + patience) ? .timedOut : .untimed
            }
            while true {
                let next: PooledEnding<T>?
                do {
                    next = try await group.next()
                } catch {
                    guard wait.withLock({ $0.timedOut }) else { throw error }
                    throw BackgroundSyncError(
                        .storeUnreachable,
                        "cannot \(action) the PostgreSQL store \(identity): no connection within \(patience) (the server is down, unreachable or out of connections)")
                }
                guard let outcome = next else { continue }
                switch outcome {
                case .value(let value):
                    group.cancelAll()
                    return value
                case .untimed:
                    continue
                case .timedOut:
                    break
                }
                // The timer ran out: give up the wait for a connection, not a statement under way.
                let givenUp = !Task.isCancelled && wait.withLock { wait -> Bool in
                    if !wait.leased { wait.timedOut = true }
                    return wait.timedOut
                }
                if givenUp { group.cancelAll() }
            }
        }
    }

    /// Runs `body` on a connection of the pool, counted in ``poolUse``.
    func leasing<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await client.withConnection { connection in
            let id = connection.id
            let seen = poolUse.withLock { use -> Bool in
                use.leased += 1
                return !use.open.insert(id).inserted
            }
            if !seen {
                connection.closeFuture.whenComplete { [poolUse] _ in poolUse.withLock { _ = $0.open.remove(id) } }
            }
            do {
                let value = try await body(connection)
                poolUse.withLock { use in
                    use.leased -= 1
                    use.lastSuccess = .now
                }
                return value
            } catch {
                poolUse.withLock { $0.leased -= 1 }
                throw error
            }
        }
    }

    /// How a child task of ``pooled(_:_:)`` ends.
    private enum PooledEnding<T: Sendable>: Sendable {
        case value(T)
        case timedOut
        case untimed
    }

    /// Runs `body` in a transaction on a pooled connection, in the calling task (``write(_:singleStatement:_:)``
    /// runs it in ``run()``'s task): tried again after a serialization failure or a deadlock;
    /// errors other than ``BackgroundSyncError`` mapped to one (see ``mapError(_:action:)``).
    func transaction<T: Sendable>(
        _ action: String, singleStatement: Bool, _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        var attempt = 0
        while true {
            do {
                return try await pooled(action) { connection in
                    if singleStatement { return try await body(connection) }
                    try await self.command(connection, "BEGIN")
                    do {
                        let result = try await body(connection)
                        try await self.command(connection, "COMMIT")
                        return result
                    } catch {
                        try? await self.command(connection, "ROLLBACK")
                        throw error
                    }
                }
            } catch let error as PSQLError where Self.isRetryable(error) && attempt < 8 {
                attempt += 1
                try? await Task.sleep(for: .milliseconds(Int64.random(in: 1...(5 << min(attempt, 5)))))
            } catch let error as BackgroundSyncError {
                throw error
            } catch {
                throw mapError(error, action: action)
            }
        }
    }

    /// A serialization failure or a deadlock: the transaction can run again.
    static func isRetryable(_ error: PSQLError) -> Bool {
        guard let state = error.serverInfo?[.sqlState] else { return false }
        return state == "40001" || state == "40P01"
    }

    /// Runs a statement and returns its rows (see ``ensureOpen(_:)``).
    @discardableResult
    func rows(_ connection: PostgresConnection, _ sql: String, _ binds: PostgresBindings = PostgresBindings()) async throws
        -> [PostgresRow]
    {
        try ensureOpen(connection)
        var rows: [PostgresRow] = []
        for try await row in try await connection.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger) {
            rows.append(row)
        }
        return rows
    }

    /// `sql` with `{s}` replaced by the schema-qualified prefix of the store's tables.
    func sql(_ text: String) -> String {
        text.replacingOccurrences(of: "{s}.", with: prefix)
    }

    // MARK: Errors

    /// A store error that says what failed and why, without credentials.
    func mapError(_ error: any Error, action: String) -> BackgroundSyncError {
        if let error = error as? BackgroundSyncError { return error }
        let code: BackgroundSyncError.Code = Self.isUnreachable(error) ? .storeUnreachable : .storage
        return BackgroundSyncError(code, "cannot \(action) the PostgreSQL store \(identity): \(describe(error))")
    }

    /// A server that cannot be reached, refuses the connection or drops it: no server, TLS refused,
    /// a role or password refused, a missing database, a server starting up, shutting down or out
    /// of connections, a connection the server closed.
    static func isUnreachable(_ error: any Error) -> Bool {
        // The pool failed the wait for a connection: connecting had failed for a while (PostgresNIO's
        // circuit breaker, a minute), with no connection open.
        if let error = error as? ConnectionPoolError { return error == .connectionCreationCircuitBreakerTripped }
        guard let error = error as? PSQLError else { return false }
        // Class 28: authorization; 3D000: no such database; 57P01, 57P02: the session was ended by
        // a shutdown or a crash of another server process; 57P03: the server is starting or
        // shutting down; 53300: too many connections.
        if let state = error.serverInfo?[.sqlState] {
            return state.hasPrefix("28") || ["3D000", "57P01", "57P02", "57P03", "53300"].contains(state)
        }
        return [
            .connectionError, .serverClosedConnection, .uncleanShutdown, .sslUnsupported, .authMechanismRequiresPassword,
            .unsupportedAuthMechanism, .saslError,
        ].contains(error.code)
    }

    /// One line about a PostgresNIO error: the server's message and SQLSTATE, or what happened to
    /// the connection. PostgresNIO's own description hides all of it.
    func describe(_ error: any Error) -> String {
        if let error = error as? ConnectionPoolError, error == .connectionCreationCircuitBreakerTripped {
            return "the connection pool gave up connecting (the server is down, unreachable or refuses connections)"
        }
        if let error = error as? ConnectionPoolError, error == .poolShutdown {
            return "the store is stopping (its connection pool shut down)"
        }
        guard let error = error as? PSQLError else { return "\(error)" }
        if let message = error.serverInfo?[.message] {
            let state = error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
            return message + state
        }
        switch error.code {
        case .connectionError:
            let reason = error.underlying.map { "\($0)" } ?? "no reason given"
            return "cannot connect to \(configuration.unixSocketPath ?? "\(configuration.host):\(configuration.port)"): \(reason)"
        case .serverClosedConnection, .uncleanShutdown: return "the server closed the connection"
        case .clientClosedConnection, .poolClosed: return "the connection pool is closed"
        case .sslUnsupported: return "the server does not support TLS (sslmode=require)"
        case .authMechanismRequiresPassword: return "the server asks for a password and none was given"
        default: return "\(error.code)"
        }
    }
}

/// How a store uses its connection pool (see ``PostgresQueueDatabase/leasing(_:)``).
struct PoolUse {
    /// The connections leased now.
    var leased = 0
    /// The connections of the pool the store has leased and not seen close since.
    var open: Set<PostgresConnection.ID> = []
    /// When a statement on a pooled connection last succeeded.
    var lastSuccess: ContinuousClock.Instant?

    /// Whether a statement succeeded within the last second and a connection known to be open is
    /// not leased now: a lease then gets a connection at once, unless another one takes it first.
    var hasIdleConnection: Bool {
        guard let lastSuccess, leased < open.count else { return false }
        return ContinuousClock.now - lastSuccess < .seconds(1)
    }
}
