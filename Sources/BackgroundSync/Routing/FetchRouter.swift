import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A route: which requests (method and URL) a strategy handles — Workbox's `registerRoute`.
public struct FetchRoute: Sendable {
    /// How a route matches a request's URL.
    public struct URLMatcher: Sendable {
        private let matches: @Sendable (URL) -> Bool

        /// Matches with a predicate on the URL.
        public static func predicate(_ matches: @escaping @Sendable (URL) -> Bool) -> URLMatcher {
            URLMatcher(matches: matches)
        }

        /// Matches URLs whose absolute string starts with `prefix` (`https://api.example.com/posts`).
        public static func prefix(_ prefix: String) -> URLMatcher {
            URLMatcher { $0.absoluteString.hasPrefix(prefix) }
        }

        /// Matches URLs whose absolute string is exactly `url`.
        public static func exactly(_ url: String) -> URLMatcher {
            URLMatcher { $0.absoluteString == url }
        }

        /// Matches URLs in whose absolute string `regex` finds a match (Workbox's `RegExp` route):
        /// `.urlMatching(/\/api\/.*\.json/)`.
        public static func urlMatching<Output>(_ regex: Regex<Output>) -> URLMatcher {
            let regex = UncheckedSendable(regex)
            return URLMatcher { (try? regex.value.firstMatch(in: $0.absoluteString)) != nil }
        }

        /// Whether `url` matches.
        public func callAsFunction(_ url: URL) -> Bool { matches(url) }
    }

    /// The method the route handles (upper case); `nil` for every method.
    public let method: String?
    /// Which URLs the route handles.
    public let url: URLMatcher
    /// The strategy for matching requests.
    public let handler: NetworkOnly

    /// Creates a route for `method` (Workbox's default is GET; writes are what this library is
    /// for, so give the method) and URLs that `url` matches.
    public init(_ method: Method?, _ url: URLMatcher, handler: NetworkOnly) {
        self.method = method?.rawValue
        self.url = url
        self.handler = handler
    }

    /// An HTTP method.
    public struct Method: RawRepresentable, Sendable, Hashable, ExpressibleByStringLiteral {
        /// The method's name, upper case.
        public let rawValue: String
        /// A method by name (upper-cased).
        public init(rawValue: String) { self.rawValue = rawValue.uppercased() }
        /// A method by name (upper-cased).
        public init(stringLiteral value: String) { self.init(rawValue: value) }

        /// `GET`.
        public static let get: Method = "GET"
        /// `POST`.
        public static let post: Method = "POST"
        /// `PUT`.
        public static let put: Method = "PUT"
        /// `PATCH`.
        public static let patch: Method = "PATCH"
        /// `DELETE`.
        public static let delete: Method = "DELETE"
    }

    /// Whether the route handles `request`.
    public func matches(_ request: URLRequest) -> Bool {
        guard let requestURL = request.url else { return false }
        if let method, (request.httpMethod ?? "GET").uppercased() != method { return false }
        return url(requestURL)
    }
}

/// Routes requests to strategies, first matching route first — Workbox's router. A request no
/// route matches goes to ``defaultHandler`` (plain network, no plugins, by default).
///
/// ```swift
/// let sync = try BackgroundSyncPlugin(name: "posts")
/// let router = FetchRouter(routes: [
///     FetchRoute(.post, .prefix("https://api.example.com/posts"), handler: NetworkOnly(plugins: [StatusPlugin(), sync])),
/// ])
/// let response = try await router.handle(request)   // a failed POST is queued and replayed later
/// ```
public struct FetchRouter: Sendable {
    /// The routes, tried in order.
    public private(set) var routes: [FetchRoute]
    /// The strategy for requests no route matches.
    public var defaultHandler: NetworkOnly

    /// Creates a router.
    public init(routes: [FetchRoute] = [], defaultHandler: NetworkOnly = NetworkOnly()) {
        self.routes = routes
        self.defaultHandler = defaultHandler
    }

    /// Adds a route after the others (Workbox's `registerRoute`).
    public mutating func register(_ route: FetchRoute) {
        routes.append(route)
    }

    /// The strategy for `request`: the first matching route's, else ``defaultHandler``.
    public func handler(for request: URLRequest) -> NetworkOnly {
        routes.first { $0.matches(request) }?.handler ?? defaultHandler
    }

    /// Sends `request` through its strategy; see ``NetworkOnly/handle(_:)``.
    public func handle(_ request: URLRequest) async throws -> ServerResponse {
        try await handler(for: request).handle(request)
    }
}

/// A value the compiler cannot prove `Sendable`, only read after creation. `Regex` holds an
/// immutable compiled program; it is not marked `Sendable` on every platform the package supports.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
