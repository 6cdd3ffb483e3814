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

    @Flag(help: "Store Authorization, Cookie and Proxy-Authorization headers as given (they are dropped otherwise).")
    var storeSecrets = false

    func validate() throws {
        if data != nil && dataFile != nil {
            throw ValidationError("--data and --data-file cannot be used together")
        }
    }

    /// Builds and checks the request; every problem is one `CLIError` line.
    func request() throws -> URLRequest {
        guard let parsed = URL(string: url), parsed.scheme != nil else {
            throw CLIError("invalid URL '\(url)': not an absolute http or https URL")
        }
        var request = URLRequest(url: parsed)
        var body: Data?
        if let data { body = Data(data.utf8) }
        if let dataFile {
            guard let contents = FileManager.default.contents(atPath: dataFile) else {
                throw CLIError("cannot read the data file '\(dataFile)'")
            }
            body = contents
        }
        request.httpMethod = (method ?? (body == nil ? "GET" : "POST")).uppercased()
        request.httpBody = body
        for header in headers {
            guard let colon = header.firstIndex(of: ":") else {
                throw CLIError("invalid header '\(header)': expected 'Name: value'")
            }
            let name = header[..<colon].trimmingCharacters(in: .whitespaces)
            let value = header[header.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty else { throw CLIError("invalid header '\(header)': the name is empty") }
            request.addValue(value, forHTTPHeaderField: name)
        }
        // The library's checks (scheme, host, method, body on GET) as one line.
        _ = try StorableRequest.fromRequest(request)
        return request
    }

    /// Queue options for requests from the command line: secrets stored only when asked.
    var queueOptions: QueueOptions {
        QueueOptions(secretHeaders: storeSecrets ? .plain : .strip, logger: quietLogger)
    }

    /// Whether a secret header is given without `--store-secrets` (it would be dropped).
    var dropsSecrets: Bool {
        !storeSecrets && headers.contains { header in
            let name = header.split(separator: ":", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            return name.map(QueueOptions().secretHeaderNames.contains) ?? false
        }
    }
}
