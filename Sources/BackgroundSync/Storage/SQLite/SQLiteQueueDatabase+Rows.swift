import Foundation
import GRDB

extension SQLiteQueueDatabase {
    /// An entry encoded for its row.
    struct EntryRow: Sendable {
        var url: String
        var method: String
        var headers: String
        var body: Data?
        var settings: String?
        var timestamp: Double
        var metadata: String?
        var idempotencyKey: String?
        var sealedSecrets: Data?
        var recordKey: String?
        var attempts: Int
        var nextAttemptAt: Double?
        var failureKind: String?
        var failureStatus: Int?
        var failureMessage: String?
        var failureExcerpt: Data?

        init(_ entry: UnidentifiedQueueStoreEntry) throws {
            let data = entry.requestData
            url = data.url
            method = data.method
            headers = FlatJSON.encode(data.headers)
            body = data.body
            let settings = RequestSettings(data)
            self.settings = settings == RequestSettings.defaults ? nil : try Self.json(settings)
            timestamp = entry.timestamp.timeIntervalSince1970
            metadata = entry.metadata.map(FlatJSON.encode)
            idempotencyKey = entry.idempotencyKey
            sealedSecrets = entry.sealedSecrets
            recordKey = entry.recordKey
            attempts = entry.attempts
            nextAttemptAt = entry.nextAttemptAt?.timeIntervalSince1970
            failureKind = entry.lastFailure?.kind.rawValue
            failureStatus = entry.lastFailure?.status
            failureMessage = entry.lastFailure?.message
            failureExcerpt = entry.lastFailure?.responseExcerpt
        }

        private static func json(_ value: some Encodable) throws -> String {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            return String(decoding: try encoder.encode(value), as: UTF8.self)
        }
    }

    /// The `URLRequest` settings kept with a request; `NULL` in the row when all are defaults.
    struct RequestSettings: Codable, Equatable {
        var timeoutInterval: Double
        var cachePolicy: UInt
        var httpShouldHandleCookies: Bool
        var allowsCellularAccess: Bool
        var mainDocumentURL: String?

        static let defaults = RequestSettings(StorableRequest.RequestData(url: ""))

        /// The settings a text holds. The entries of a queue mostly share theirs: the last text
        /// decoded is kept, so that a replay does not run a `JSONDecoder` for every entry.
        static func decode(_ text: String) throws -> RequestSettings {
            if let last = lastDecoded.withLock({ $0 }), last.text.utf8.elementsEqual(text.utf8) { return last.settings }
            let settings = try JSONDecoder().decode(RequestSettings.self, from: Data(text.utf8))
            lastDecoded.withLock { $0 = (text, settings) }
            return settings
        }
        private static let lastDecoded = Locked<(text: String, settings: RequestSettings)?>(nil)

        init(_ data: StorableRequest.RequestData) {
            timeoutInterval = data.timeoutInterval
            cachePolicy = data.cachePolicy
            httpShouldHandleCookies = data.httpShouldHandleCookies
            allowsCellularAccess = data.allowsCellularAccess
            mainDocumentURL = data.mainDocumentURL
        }
    }

    /// The columns an entry is read from (`SELECT \(EntryColumn.list)`), in this order, so that
    /// ``decode(_:)`` reads them by index: GRDB finds a column by name by lower-casing and
    /// comparing every column's name, on every read.
    enum EntryColumn: Int, CaseIterable {
        case id, queueName, url, method, headers, body, settings, timestamp, metadata, state, attempts
        case nextAttemptAt, leaseOwner, leaseExpiresAt, lastStatus, lastError, lastResponseExcerpt
        case idempotencyKey, sealedSecrets, lastFailureKind, position, recordKey

        static let list = allCases.map { "\($0)" }.joined(separator: ", ")
    }

    /// Reads an entry from a row of `SELECT \(EntryColumn.list)`. Every column is converted by
    /// GRDB's `fromDatabaseValue`, which refuses what it cannot convert (text in a number column,
    /// NULL in a required one) where SQLite would coerce it, so a damaged row (a wrong type written
    /// by hand or by corruption) is an error that names the entry and the column, never a crash.
    static func decode(_ row: Row) throws -> QueueStoreEntry {
        // The stored value, then converted, without GRDB's generic `decode(atIndex:)`, whose
        // unspecialized code (for optionals too) is a large part of a lease's CPU.
        func stored(_ column: EntryColumn) -> DatabaseValue {
            (row[column.rawValue] as (any DatabaseValueConvertible)?)?.databaseValue ?? .null
        }
        func value<T: DatabaseValueConvertible>(_ column: EntryColumn) throws -> T {
            let stored = stored(column)
            if let converted = T.fromDatabaseValue(stored) { return converted }
            throw BackgroundSyncError(.storage, "column \(column) holds \(stored), not \(T.self)")
        }
        func optional<T: DatabaseValueConvertible>(_ column: EntryColumn) throws -> T? {
            let stored = stored(column)
            if stored.isNull { return nil }
            if let converted = T.fromDatabaseValue(stored) { return converted }
            throw BackgroundSyncError(.storage, "column \(column) holds \(stored), not \(T.self)")
        }
        let id: Int64 = try value(.id)
        func failure() throws -> ReplayFailure? {
            guard let message: String = try optional(.lastError) else { return nil }
            let status: Int? = try optional(.lastStatus)
            let kindText: String? = try optional(.lastFailureKind)
            let kind: ReplayFailure.Kind
            if let kindText {
                guard let known = ReplayFailure.Kind(rawValue: kindText) else {
                    throw BackgroundSyncError(.storage, "unknown failure kind '\(kindText)'")
                }
                kind = known
            } else {
                kind = .unrecorded
            }
            return ReplayFailure(
                kind: kind, status: status, message: message, responseExcerpt: try optional(.lastResponseExcerpt))
        }
        do {
            let headers = try FlatJSON.decode(try value(.headers))
            let settingsText: String? = try optional(.settings)
            let settings = try settingsText.map(RequestSettings.decode) ?? RequestSettings.defaults
            let metadataText: String? = try optional(.metadata)
            let metadata = try metadataText.map(FlatJSON.decode)
            let stateText: String = try value(.state)
            guard let state = EntryState(rawValue: stateText) else {
                throw BackgroundSyncError(.storage, "unknown state '\(stateText)'")
            }
            let data = StorableRequest.RequestData(
                url: try value(.url),
                method: try value(.method),
                headers: headers,
                body: try optional(.body),
                timeoutInterval: settings.timeoutInterval,
                cachePolicy: settings.cachePolicy,
                httpShouldHandleCookies: settings.httpShouldHandleCookies,
                allowsCellularAccess: settings.allowsCellularAccess,
                mainDocumentURL: settings.mainDocumentURL)
            let timestamp: Double = try value(.timestamp)
            let nextAttemptAt: Double? = try optional(.nextAttemptAt)
            return QueueStoreEntry(
                id: id,
                queueName: try value(.queueName),
                position: try value(.position),
                requestData: data,
                timestamp: Date(timeIntervalSince1970: timestamp),
                metadata: metadata,
                state: state,
                attempts: try value(.attempts),
                nextAttemptAt: nextAttemptAt.map(Date.init(timeIntervalSince1970:)),
                lastFailure: try failure(),
                idempotencyKey: try optional(.idempotencyKey),
                sealedSecrets: try optional(.sealedSecrets),
                recordKey: try optional(.recordKey))
        } catch {
            throw BackgroundSyncError(.storage, "entry \(id) cannot be read: \(error)", entryID: id)
        }
    }
}
