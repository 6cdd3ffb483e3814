import BackgroundSync
import Foundation
import PostgresNIO

extension PostgresQueueDatabase {
    /// The columns an entry is read from, in this order (``decode(_:)`` reads them by index).
    static let entryColumns = """
        id, queue_name, position, url, method, headers, body, timeout_interval, cache_policy, handles_cookies,
        allows_cellular, main_document_url, queued_at, metadata, state, attempts, next_attempt_at, last_failure_kind,
        last_status, last_error, last_response_excerpt, idempotency_key, sealed_secrets, record_key
        """
    /// How many columns ``entryColumns`` lists: a query that selects more puts them after these.
    static let entryColumnCount = 24

    /// The columns an entry's content is written to (an insert, a save in place), in the order of
    /// ``contentBinds(_:)``.
    static let contentColumns = """
        url, method, headers, body, timeout_interval, cache_policy, handles_cookies, allows_cellular,
        main_document_url, queued_at, metadata, idempotency_key, sealed_secrets, record_key, attempts,
        next_attempt_at, last_failure_kind, last_status, last_error, last_response_excerpt
        """
    static let contentColumnCount = 20

    /// An entry's content, bound in the order of ``contentColumns``.
    static func contentValues(_ entry: UnidentifiedQueueStoreEntry) -> [any Bindable] {
        let data = entry.requestData
        let failure = entry.lastFailure
        return [
            data.url, data.method, FlatJSON.encode(data.headers), data.body, data.timeoutInterval, Int64(data.cachePolicy),
            data.httpShouldHandleCookies, data.allowsCellularAccess, data.mainDocumentURL,
            entry.timestamp.timeIntervalSince1970, entry.metadata.map(FlatJSON.encode), entry.idempotencyKey, entry.sealedSecrets,
            entry.recordKey, Int64(entry.attempts), entry.nextAttemptAt?.timeIntervalSince1970, failure?.kind.rawValue,
            failure?.status.map(Int64.init), failure?.message, failure?.responseExcerpt,
        ]
    }

    /// `$first, $first+1, …` for `count` parameters.
    static func placeholders(from first: Int, count: Int) -> String {
        (first..<(first + count)).map { "$\($0)" }.joined(separator: ", ")
    }

    /// Reads an entry from a row whose columns from `first` on are ``entryColumns``. A row that
    /// cannot be read is an error that names the entry, never a crash.
    static func decode(_ row: PostgresRow, from first: Int = 0) throws -> QueueStoreEntry {
        let cells = row.makeRandomAccess()
        let id = try cells[first].decode(Int64.self)
        do {
            func value<T: PostgresDecodable>(_ index: Int, _ type: T.Type = T.self) throws -> T {
                try cells[first + index].decode(T.self)
            }
            let headers = try FlatJSON.decode(try value(5, String.self))
            let metadata = try (try value(13, String?.self)).map(FlatJSON.decode)
            let stateText = try value(14, String.self)
            guard let state = EntryState(rawValue: stateText) else {
                throw BackgroundSyncError(.storage, "unknown state '\(stateText)'")
            }
            var failure: ReplayFailure?
            if let message = try value(19, String?.self) {
                let kindText = try value(17, String?.self)
                let kind = try kindText.map {
                    try ReplayFailure.Kind(rawValue: $0).orThrow(BackgroundSyncError(.storage, "unknown failure kind '\($0)'"))
                } ?? .unrecorded
                failure = ReplayFailure(
                    kind: kind, status: try value(18, Int64?.self).map(Int.init), message: message,
                    responseExcerpt: try value(20, Data?.self))
            }
            let cachePolicy = try value(8, Int64.self)
            let data = StorableRequest.RequestData(
                url: try value(3), method: try value(4), headers: headers, body: try value(6, Data?.self),
                timeoutInterval: try value(7), cachePolicy: UInt(clamping: max(cachePolicy, 0)),
                httpShouldHandleCookies: try value(9), allowsCellularAccess: try value(10),
                mainDocumentURL: try value(11, String?.self))
            return QueueStoreEntry(
                id: id, queueName: try value(1), position: try value(2), requestData: data,
                timestamp: Date(timeIntervalSince1970: try value(12)), metadata: metadata, state: state,
                attempts: Int(try value(15, Int64.self)),
                nextAttemptAt: try value(16, Double?.self).map(Date.init(timeIntervalSince1970:)), lastFailure: failure,
                idempotencyKey: try value(21, String?.self), sealedSecrets: try value(22, Data?.self),
                recordKey: try value(23, String?.self))
        } catch {
            throw BackgroundSyncError(.storage, "entry \(id) cannot be read: \(error)", entryID: id)
        }
    }
}
