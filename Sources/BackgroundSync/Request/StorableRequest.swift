import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A `URLRequest` in a form that can be written to a database and turned back into an equal request.
///
/// The Swift counterpart of Workbox's `StorableRequest`: `fromRequest(_:)` captures the URL, the
/// method, the headers (names lower-cased; values of names that differ only by case are joined with
/// ", "), the body (an `httpBodyStream` is read to the end) and the `URLRequest` settings that
/// change how it is sent. `toRequest()` rebuilds the request.
///
/// Only absolute `http`/`https` URLs with a host are accepted, and a `GET` or `HEAD` request may not
/// carry a body (it could not be sent again): both throw ``BackgroundSyncError/Code/invalidRequest``
/// at capture time, so nothing is ever queued that cannot be replayed.
public struct StorableRequest: Sendable, Hashable {
    /// The plain data of a stored request.
    public struct RequestData: Codable, Sendable, Hashable {
        /// The absolute `http`/`https` URL.
        public var url: String
        /// The HTTP method, upper-cased (`POST`).
        public var method: String
        /// Header fields, names lower-cased.
        public var headers: [String: String]
        /// The body, `nil` when there is none.
        public var body: Data?
        /// `URLRequest.timeoutInterval` in seconds (default 60).
        public var timeoutInterval: Double
        /// `URLRequest.cachePolicy` raw value (default 0, `useProtocolCachePolicy`).
        public var cachePolicy: UInt
        /// `URLRequest.httpShouldHandleCookies` (default `true`).
        public var httpShouldHandleCookies: Bool
        /// `URLRequest.allowsCellularAccess` (default `true`).
        public var allowsCellularAccess: Bool
        /// `URLRequest.mainDocumentURL`, if set.
        public var mainDocumentURL: String?

        /// Creates request data; every setting but the URL has the `URLRequest` default.
        public init(
            url: String,
            method: String = "GET",
            headers: [String: String] = [:],
            body: Data? = nil,
            timeoutInterval: Double = 60,
            cachePolicy: UInt = 0,
            httpShouldHandleCookies: Bool = true,
            allowsCellularAccess: Bool = true,
            mainDocumentURL: String? = nil
        ) {
            self.url = url
            self.method = method
            self.headers = headers
            self.body = body
            self.timeoutInterval = timeoutInterval
            self.cachePolicy = cachePolicy
            self.httpShouldHandleCookies = httpShouldHandleCookies
            self.allowsCellularAccess = allowsCellularAccess
            self.mainDocumentURL = mainDocumentURL
        }

        private enum CodingKeys: String, CodingKey {
            case url, method, headers, body, timeoutInterval, cachePolicy, httpShouldHandleCookies
            case allowsCellularAccess, mainDocumentURL
        }

        /// Decodes request data; settings missing from the input take their defaults, so data
        /// written by an older version still decodes.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            url = try c.decode(String.self, forKey: .url)
            method = try c.decodeIfPresent(String.self, forKey: .method) ?? "GET"
            headers = try c.decodeIfPresent([String: String].self, forKey: .headers) ?? [:]
            body = try c.decodeIfPresent(Data.self, forKey: .body)
            timeoutInterval = try c.decodeIfPresent(Double.self, forKey: .timeoutInterval) ?? 60
            cachePolicy = try c.decodeIfPresent(UInt.self, forKey: .cachePolicy) ?? 0
            httpShouldHandleCookies = try c.decodeIfPresent(Bool.self, forKey: .httpShouldHandleCookies) ?? true
            allowsCellularAccess = try c.decodeIfPresent(Bool.self, forKey: .allowsCellularAccess) ?? true
            mainDocumentURL = try c.decodeIfPresent(String.self, forKey: .mainDocumentURL)
        }
    }

    private let data: RequestData
    /// The parsed URL, checked at creation.
    private let parsedURL: URL

    /// Wraps request data after checking it (absolute http/https URL, a valid method, no body on
    /// GET/HEAD). Header names are lower-cased and the method upper-cased.
    public init(requestData: RequestData) throws {
        var data = requestData
        if data.method.utf8.contains(where: { (0x61...0x7A).contains($0) || $0 >= 0x80 }) {
            data.method = data.method.uppercased()
        }
        data.headers = Self.lowercasedHeaders(data.headers)
        parsedURL = try Self.validate(data, url: URL(string: data.url))
        self.data = data
    }

    /// Captures a `URLRequest`. Throws ``BackgroundSyncError/Code/invalidRequest`` for a request
    /// that could not be replayed.
    public static func fromRequest(_ request: URLRequest) throws -> StorableRequest {
        guard let url = request.url else {
            throw BackgroundSyncError(.invalidRequest, "invalid request: no URL")
        }
        var body = request.httpBody
        if body == nil, let stream = request.httpBodyStream {
            body = try readAll(stream)
        }
        let data = RequestData(
            url: url.absoluteString,
            method: (request.httpMethod ?? "GET").uppercased(),
            headers: lowercasedHeaders(request.allHTTPHeaderFields ?? [:]),
            body: body,
            timeoutInterval: request.timeoutInterval,
            cachePolicy: request.cachePolicy.rawValue,
            httpShouldHandleCookies: request.httpShouldHandleCookies,
            allowsCellularAccess: request.allowsCellularAccess,
            mainDocumentURL: request.mainDocumentURL?.absoluteString
        )
        // The URL is checked as parsed already; the data is normalised already.
        return StorableRequest(checked: data, url: try validate(data, url: url))
    }

    private init(checked data: RequestData, url: URL) {
        self.data = data
        self.parsedURL = url
    }

    /// Rebuilds a `URLRequest` equal to the captured one (header names lower-cased).
    public func toRequest() -> URLRequest {
        // Runs for every replayed entry: the header fields go in as one dictionary (setting them one
        // by one compares each name with Foundation's list of known fields), and settings that
        // have their default value are left alone.
        var request = URLRequest(url: parsedURL)
        // Through the setter: URLSession on Linux does not apply an interval given to
        // `URLRequest(url:cachePolicy:timeoutInterval:)` (seen: a hanging server held the request
        // past it; the classification test of a hang catches it).
        request.timeoutInterval = data.timeoutInterval
        if let policy = URLRequest.CachePolicy(rawValue: data.cachePolicy), policy != .useProtocolCachePolicy {
            request.cachePolicy = policy
        }
        if data.method != "GET" { request.httpMethod = data.method }
        if !data.headers.isEmpty { request.allHTTPHeaderFields = data.headers }
        request.httpBody = data.body
        if !data.httpShouldHandleCookies { request.httpShouldHandleCookies = false }
        if !data.allowsCellularAccess { request.allowsCellularAccess = false }
        if let mainDocumentURL = data.mainDocumentURL { request.mainDocumentURL = URL(string: mainDocumentURL) }
        return request
    }

    /// A copy of the request's plain data.
    public func toObject() -> RequestData {
        data
    }

    /// A copy of this request (Workbox's `clone()`; `StorableRequest` is a value type, so this is
    /// the value itself).
    public func clone() -> StorableRequest {
        self
    }

    /// The HTTP method, upper-cased.
    public var method: String { data.method }
    /// The URL.
    public var url: URL { parsedURL }

    // MARK: - Validation

    private static let allowedSchemes: Set<String> = ["http", "https"]

    /// Whether a byte may appear in an (upper-cased) HTTP method token (RFC 9110 `tchar`).
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        case UInt8(ascii: "a")...UInt8(ascii: "z"): true
        default: "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }

    /// Checks normalised request data; `url` is `data.url` parsed (`nil` if it did not parse).
    private static func validate(_ data: RequestData, url: URL?) throws -> URL {
        guard let url, let scheme = url.scheme?.lowercased() else {
            throw BackgroundSyncError(.invalidRequest, "invalid request: '\(data.url)' is not an absolute URL")
        }
        guard allowedSchemes.contains(scheme) else {
            throw BackgroundSyncError(
                .invalidRequest, "invalid request: scheme '\(scheme)' in '\(data.url)' is not http or https")
        }
        guard let host = url.host, !host.isEmpty else {
            throw BackgroundSyncError(.invalidRequest, "invalid request: '\(data.url)' has no host")
        }
        guard !data.method.isEmpty, data.method.utf8.allSatisfy(isTokenByte) else {
            throw BackgroundSyncError(.invalidRequest, "invalid request: '\(data.method)' is not an HTTP method")
        }
        if data.method == "GET" || data.method == "HEAD", let body = data.body, !body.isEmpty {
            throw BackgroundSyncError(
                .invalidRequest,
                "invalid request: \(data.method) \(data.url) has a body of \(body.count) bytes, which cannot be sent again")
        }
        for (name, value) in data.headers { try validateHeaderField(name: name, value: value) }
        return url
    }

    /// Checks one header field as RFC 9110 defines it: the name a token (letters, digits and
    /// ``!#$%&'*+-.^_`|~``), the value without control characters other than a tab (a CR or LF
    /// would split the field, a NUL end it). Throws ``BackgroundSyncError/Code/invalidRequest``
    /// naming the field; request capture runs the same check on every field.
    public static func validateHeaderField(name: String, value: String) throws {
        guard !name.isEmpty else {
            throw BackgroundSyncError(.invalidRequest, "invalid request: a header field has an empty name")
        }
        guard name.utf8.allSatisfy(isTokenByte) else {
            throw BackgroundSyncError(
                .invalidRequest,
                "invalid request: header name '\(name)' is not a token (no spaces, colons or control characters)")
        }
        if let byte = value.utf8.first(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) {
            throw BackgroundSyncError(
                .invalidRequest,
                "invalid request: the value of header '\(name)' holds a control character (0x\(String(byte, radix: 16, uppercase: true).leftPadded(2)))")
        }
    }

    /// Header names lower-cased; fields whose names differ only in case are joined with ", ", in
    /// the order of their original names (stable whatever the dictionary's order).
    private static func lowercasedHeaders(_ fields: [String: String]) -> [String: String] {
        // Stored requests have theirs lower-cased already: nothing to rebuild.
        // (Non-ASCII names take the long way: Unicode case mapping may turn them into tokens.)
        if fields.keys.allSatisfy({ !$0.utf8.contains(where: { (0x41...0x5A).contains($0) || $0 >= 0x80 }) }) {
            return fields
        }
        var headers: [String: String] = [:]
        headers.reserveCapacity(fields.count)
        for (name, value) in fields {
            guard headers.updateValue(value, forKey: name.lowercased()) == nil else {
                return joinedLowercasedHeaders(fields)
            }
        }
        return headers
    }

    private static func joinedLowercasedHeaders(_ fields: [String: String]) -> [String: String] {
        var headers: [String: String] = [:]
        for (name, value) in fields.sorted(by: { $0.key < $1.key }) {
            let key = name.lowercased()
            if let existing = headers[key] {
                headers[key] = existing + ", " + value
            } else {
                headers[key] = value
            }
        }
        return headers
    }

    static func readAll(_ stream: InputStream) throws -> Data {
        var data = Data()
        stream.open()
        defer { stream.close() }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = stream.read(&buffer, maxLength: buffer.count)
            if count < 0 {
                throw BackgroundSyncError(
                    .invalidRequest, "invalid request: the body stream failed",
                    underlying: stream.streamError)
            }
            if count == 0 { break }
            data.append(buffer, count: count)
        }
        return data
    }
}

extension String {
    /// The string padded on the left with zeros to `width` characters.
    fileprivate func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
