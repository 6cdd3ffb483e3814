import ArgumentParser
import BackgroundSync
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The request of `enqueue` and `send`.
struct RequestOptions: ParsableArguments {
    @Argument(help: "The absolute http or https URL.")
    var url: String

    @Option(help: "The queue to store the request in.")
    var queue: String = "default"

    @Option(name: [.customShort("X"), .long], help: "The HTTP method (default: POST with a body, GET without).")
    var method: String?

    @Option(name: [.customShort("H"), .customLong("header")], help: ArgumentHelp("A header field, 'Name: value'; repeatable.", valueName: "header"))
    var headers: [String] = []

    @Option(name: [.customShort("d"), .long], help: "The body, as text.")
    var data: String?

    @Option(help: ArgumentHelp("Read the body from a file.", valueName: "file"))
    var dataFile: String?

    @Flag(help: "Store Authorization, Cookie and Proxy-Authorization headers and user:password in the URL as given (they are dropped otherwise).")
    var storeSecrets = false

    func validate() throws {
        if data != nil && dataFile != nil {
            throw ValidationError("--data and --data-file cannot be used together")
        }
    }

    /// Builds and checks the request exactly as given: a header field or method that is not valid
    /// HTTP is refused (one `BackgroundSyncError` or `CLIError` line), never dropped or changed.
    func request() throws -> URLRequest {
        // Checked here, before the database is opened (Queue checks it too, after).
        guard !queue.isEmpty else { throw CLIError("a queue name cannot be empty") }
        guard URL(string: url)?.scheme != nil else {
            throw CLIError("invalid URL '\(url)': not an absolute http or https URL")
        }
        var body: Data?
        if let data { body = Data(data.utf8) }
        if let dataFile {
            guard let contents = FileManager.default.contents(atPath: dataFile) else {
                throw CLIError("cannot read the data file '\(dataFile)'")
            }
            body = contents
        }
        var fields: [String: String] = [:]
        for header in headers {
            guard let colon = header.firstIndex(of: ":") else {
                throw CLIError("invalid header '\(header)': expected 'Name: value'")
            }
            // Only optional whitespace (spaces and tabs) around the value is dropped, as HTTP does.
            let name = String(header[..<colon])
            let value = String(header[header.index(after: colon)...]).trimmingOptionalWhitespace()
            try StorableRequest.validateHeaderField(name: name, value: value)
            let key = name.lowercased()
            fields[key] = fields[key].map { "\($0), \(value)" } ?? value
        }
        // The library's checks (scheme, host, method, body on GET) as one line.
        let data = StorableRequest.RequestData(
            url: url, method: method ?? (body == nil ? "GET" : "POST"), headers: fields, body: body)
        return try StorableRequest(requestData: data).toRequest()
    }

    /// Queue options for requests from the command line: secrets stored only when asked.
    var queueOptions: QueueOptions {
        QueueOptions(secretHeaders: storeSecrets ? .plain : .strip, logger: quietLogger)
    }

    /// Whether a secret header or credentials in the URL are given without `--store-secrets`
    /// (they would not be stored).
    var dropsSecrets: Bool {
        guard !storeSecrets else { return false }
        if let parsed = URL(string: url), parsed.user != nil || parsed.password != nil { return true }
        return headers.contains { header in
            let name = header.split(separator: ":", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            return name.map(QueueOptions().secretHeaderNames.contains) ?? false
        }
    }
}

extension String {
    /// The string without leading and trailing spaces and tabs (HTTP's optional whitespace).
    func trimmingOptionalWhitespace() -> String {
        let isOWS = { (character: Character) in character == " " || character == "\t" }
        guard let first = firstIndex(where: { !isOWS($0) }), let last = lastIndex(where: { !isOWS($0) }) else { return "" }
        return String(self[first...last])
    }
}
