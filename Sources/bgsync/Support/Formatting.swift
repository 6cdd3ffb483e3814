import BackgroundSync
import BackgroundSyncDashboard
import Foundation
import Logging

/// A logger that drops everything: commands report on stdout/stderr themselves.
let quietLogger = Logger(label: "bgsync") { _ in SwiftLogNoOpLogHandler() }

/// Sends the process's log lines to stderr at `level` and above (the daemons: `run`, `dashboard`).
func logToStandardError(at level: Logger.Level) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}

/// Left-aligned columns.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

/// Encodes a value as the JSON the read commands print (sorted keys, ISO 8601 dates).
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
    encoder.dateEncodingStrategy = .iso8601
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Whether a file descriptor is a terminal.
func isTerminal(_ fd: Int32) -> Bool {
    isatty(fd) == 1
}

/// An optional field the JSON output always writes, as `null` when empty, so that scripts always
/// find the same keys (a synthesized `Encodable` leaves a `nil` optional out).
@propertyWrapper
struct AlwaysWritten<Value: Encodable & Sendable>: Encodable, Sendable {
    var wrappedValue: Value?

    init(wrappedValue: Value?) {
        self.wrappedValue = wrappedValue
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue { try container.encode(wrappedValue) } else { try container.encodeNil() }
    }
}

/// An entry as listed and shown, with stable JSON field names.
struct EntryView: Encodable, Sendable {
    var id: Int64
    var queue: String
    var state: String
    var method: String
    var url: String
    var queuedAt: Date
    var ageSeconds: Int
    var attempts: Int
    var nextAttemptAt: Date?
    var lastFailure: FailureView?
    var idempotencyKey: String?
    var metadata: [String: String]?
    var headers: [String: String]?
    var body: String?
    var bodyBase64: String?
    var bodyBytes: Int?

    private enum CodingKeys: String, CodingKey {
        case id, queue, state, method, url, queuedAt, ageSeconds, attempts, nextAttemptAt, lastFailure
        case idempotencyKey, metadata, headers, body, bodyBase64, bodyBytes
    }

    /// Every field is written, `null` when empty, so that scripts always find the same keys
    /// (`headers` and the body fields only in `show`).
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(queue, forKey: .queue)
        try c.encode(state, forKey: .state)
        try c.encode(method, forKey: .method)
        try c.encode(url, forKey: .url)
        try c.encode(queuedAt, forKey: .queuedAt)
        try c.encode(ageSeconds, forKey: .ageSeconds)
        try c.encode(attempts, forKey: .attempts)
        try c.encode(nextAttemptAt, forKey: .nextAttemptAt)
        try c.encode(lastFailure, forKey: .lastFailure)
        try c.encode(idempotencyKey, forKey: .idempotencyKey)
        try c.encode(metadata, forKey: .metadata)
        if let headers {
            try c.encode(headers, forKey: .headers)
            try c.encode(body, forKey: .body)
            try c.encode(bodyBase64, forKey: .bodyBase64)
            try c.encode(bodyBytes ?? 0, forKey: .bodyBytes)
        }
    }

    init(_ entry: QueueStoreEntry, now: Date, details: Bool) {
        id = entry.id
        queue = entry.queueName
        state = entry.state.rawValue
        method = entry.requestData.method
        url = MaskedRequest.url(entry.requestData.url)
        queuedAt = entry.timestamp
        ageSeconds = Int(now.timeIntervalSince(entry.timestamp))
        attempts = entry.attempts
        nextAttemptAt = entry.nextAttemptAt
        lastFailure = entry.lastFailure.map(FailureView.init)
        idempotencyKey = entry.idempotencyKey
        metadata = entry.metadata
        guard details else { return }
        headers = MaskedRequest.headers(of: entry)
        if let data = entry.requestData.body {
            bodyBytes = data.count
            if let text = String(data: data, encoding: .utf8) { body = text } else { bodyBase64 = data.base64EncodedString() }
        }
    }
}

/// A recorded failure as shown: what failed, the status, the message, and what the server answered.
struct FailureView: Encodable, Sendable {
    var kind: String
    @AlwaysWritten var status: Int? = nil
    var message: String
    /// The start of the response body as text, when it is UTF-8.
    @AlwaysWritten var responseExcerpt: String? = nil
    /// The start of the response body in base64, when it is not text.
    @AlwaysWritten var responseExcerptBase64: String? = nil

    init(_ failure: ReplayFailure) {
        kind = failure.kind.rawValue
        short = failure.summary
        status = failure.status
        message = failure.message
        if let excerpt = failure.responseExcerpt {
            if let text = String(data: excerpt, encoding: .utf8) {
                responseExcerpt = text
            } else {
                responseExcerptBase64 = excerpt.base64EncodedString()
            }
        }
    }

    /// A short form for a table cell: `HTTP 503`, `no response`, `hook failed`... (not in JSON).
    let short: String

    private enum CodingKeys: String, CodingKey {
        case kind, status, message, responseExcerpt, responseExcerptBase64
    }
}
