import BackgroundSync
import Foundation
import NIOCore
import PostgresNIO

/// Statements written to a connection only while it is open, checked on its event loop.
///
/// PostgresNIO writes a statement to its channel with no promise: written to a connection that has
/// just closed (the server restarted, the network dropped), it is lost and its result never comes,
/// and the task awaiting it waits forever. Run on the connection's event loop, a statement's
/// caller sees the connection's state as the loop does: a connection still open there has its
/// handler, which fails the statement when the connection closes; one already closed is refused
/// here, at once. So work on a connection runs with the connection's event loop as its task
/// executor (``onLoop(of:_:)``), and every statement checks ``ensureOpen(_:)`` right before it is
/// written, with no suspension in between.
extension PostgresQueueDatabase {
    /// Runs `body` on `connection`'s event loop (on systems older than macOS 15 and iOS 18, where
    /// task executors do not exist, where it is called).
    func onLoop<T: Sendable>(of connection: PostgresConnection, _ body: () async throws -> T) async throws -> T {
        if #available(macOS 15, iOS 18, tvOS 18, watchOS 11, *) {
            return try await withTaskExecutorPreference(EventLoopTaskExecutor.for(connection.eventLoop)) {
                try await body()
            }
        }
        return try await body()
    }

    /// Throws when `connection` is closed: a statement written to it now would be lost.
    func ensureOpen(_ connection: PostgresConnection) throws {
        if connection.isClosed {
            throw BackgroundSyncError(.storeUnreachable, "the connection to the PostgreSQL store \(identity) closed")
        }
    }

    /// Runs a statement that returns nothing of interest (`BEGIN`, `COMMIT`, `ROLLBACK`).
    func command(_ connection: PostgresConnection, _ sql: String) async throws {
        try ensureOpen(connection)
        try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger)
    }
}

/// A task executor running jobs on one SwiftNIO event loop, one instance per loop.
@available(macOS 15, iOS 18, tvOS 18, watchOS 11, *)
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    private init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    private static let executors = Locked<[ObjectIdentifier: EventLoopTaskExecutor]>([:])

    /// The executor of `eventLoop`.
    static func `for`(_ eventLoop: any EventLoop) -> EventLoopTaskExecutor {
        executors.withLock { executors in
            let key = ObjectIdentifier(eventLoop)
            if let executor = executors[key] { return executor }
            let executor = EventLoopTaskExecutor(eventLoop)
            executors[key] = executor
            return executor
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
