import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The one error type thrown by the `BackgroundSync` module.
///
/// `code` tells what went wrong; `queueName`, `entryID`, `status` and `underlying` give the
/// context when there is one. `description` is a single readable line that names the queue, so it
/// can be logged or shown as is.
public struct BackgroundSyncError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Base: String, Hashable, Sendable {
            case duplicateQueueName
            case queueReplayFailed
            case invalidRequest
            case storage
            case notADatabase
            case schemaTooNew
            case unknownSyncTag
            case entryNotFound
            case queuePaused
            case storeUnreachable
        }

        fileprivate let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// A live queue with the same name already uses the same database.
        public static let duplicateQueueName = Code(.duplicateQueueName)
        /// Replay stopped at an entry that could not be delivered now; the entry stays queued.
        public static let queueReplayFailed = Code(.queueReplayFailed)
        /// A request cannot be stored: not an absolute http(s) URL, an empty method, a body on GET/HEAD...
        public static let invalidRequest = Code(.invalidRequest)
        /// The database failed (I/O error, disk full, locked, corrupt file...).
        public static let storage = Code(.storage)
        /// The file exists but is not a SQLite database (or is a directory).
        public static let notADatabase = Code(.notADatabase)
        /// The database was written by a newer version of this library; it is left untouched.
        public static let schemaTooNew = Code(.schemaTooNew)
        /// A sync event was dispatched for a tag that no live queue handles.
        public static let unknownSyncTag = Code(.unknownSyncTag)
        /// No entry has the given id.
        public static let entryNotFound = Code(.entryNotFound)
        /// The server asked for credentials (401/403); replay waits for ``Queue/resume()``.
        public static let queuePaused = Code(.queuePaused)
        /// A database server (PostgreSQL) cannot be reached or refused the connection: no server
        /// at the address, a refused password or role, a missing database.
        public static let storeUnreachable = Code(.storeUnreachable)

        public var description: String { base.rawValue }
    }

    /// What went wrong.
    public var code: Code
    /// A one-line explanation of the problem.
    public var message: String
    /// The queue concerned, when there is one.
    public var queueName: String?
    /// The entry concerned, when there is one.
    public var entryID: Int64?
    /// The HTTP status that stopped a replay, when a response was received.
    public var status: Int?
    /// The error that caused this one (a transport error, a SQLite error...).
    public var underlying: (any Error)?

    /// Creates an error.
    public init(
        _ code: Code,
        _ message: String,
        queueName: String? = nil,
        entryID: Int64? = nil,
        status: Int? = nil,
        underlying: (any Error)? = nil
    ) {
        self.code = code
        self.message = message
        self.queueName = queueName
        self.entryID = entryID
        self.status = status
        self.underlying = underlying
    }

    public var description: String {
        var text = message
        if let queueName { text += " (queue '\(queueName)')" }
        if let underlying { text += ": " + describeError(underlying) }
        return text
    }
}

/// The cause of a replay that stopped because another replayer holds its ordered queue's head: not
/// a failure of the queue, only a turn to wait for.
package struct HeadHeldByAnotherReplayer: Error, CustomStringConvertible {
    /// The lease's owner and expiry.
    package let owner: String
    package let until: Date

    package var description: String { "\(owner) holds its lease until \(until)" }
}

extension BackgroundSyncError {
    /// Whether a replay stopped because another replayer holds its ordered queue's head.
    package var isBusyHead: Bool { underlying is HeadHeldByAnotherReplayer }
}

/// A one-line description of an error: Foundation's URL errors by their message (their default
/// description dumps the whole `userInfo`), others as they describe themselves.
func describeError(_ error: any Error) -> String {
    if let error = error as? URLError {
        return "\(error.localizedDescription) (URLError \(error.code.rawValue))"
    }
    return String(describing: error)
}
