import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore

/// Who may use the dashboard, checked before any route:
/// - with a token: every request but `GET /healthz` carries it, as `Authorization: Bearer …` or
///   as the cookie that `?token=…` sets once (then the address is cleaned of it);
/// - without one: the request must name a loopback host, so that a page of another site cannot
///   reach the dashboard through a DNS name rebound to 127.0.0.1;
/// - a POST must not come from another site (`Sec-Fetch-Site`, `Origin`); the form token each
///   action checks does the rest.
@available(macOS 14, iOS 17, tvOS 17, *)
struct AccessMiddleware<Context: RequestContext>: RouterMiddleware {
    /// The SHA-256 of the token, as the cookie holds it (the token itself is never stored).
    let tokenDigest: String?

    init(token: String?) {
        tokenDigest = token.map(Self.digest)
    }

    static var cookieName: String { "bgsync_dashboard" }

    static func digest(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.method == .get, request.uri.path == "/healthz" { return try await next(request, context) }
        if let tokenDigest {
            if request.method == .get, let given = request.uri.queryParameters.get("token") {
                guard constantTimeEqual(Self.digest(String(given)), tokenDigest) else { return Self.refuse(.unauthorized, "wrong token") }
                // Keep the token out of the address bar and the history: a cookie, and the same
                // address without it.
                var headers: HTTPFields = [.location: Self.withoutToken(request.uri), .cacheControl: "no-store"]
                headers[.setCookie] = "\(Self.cookieName)=\(tokenDigest); Path=/; HttpOnly; SameSite=Lax"
                return Response(status: .seeOther, headers: headers)
            }
            guard carriesToken(request, digest: tokenDigest) else {
                return Self.refuse(.unauthorized, "this dashboard needs its token: open it once as /?token=… (or send Authorization: Bearer …)")
            }
        } else {
            guard let host = Self.hostName(request.head.authority), DashboardConfiguration.isLoopback(host) else {
                return Self.refuse(.forbidden, "this dashboard answers only to a loopback address (127.0.0.1, localhost or [::1])")
            }
        }
        if request.method == .post {
            if let site = request.headers[Self.fetchSite], site != "same-origin", site != "none" {
                return Self.refuse(.forbidden, "an action must come from the dashboard's own pages")
            }
            if let origin = request.headers[.origin], origin != "null",
                Self.hostAndPort(ofOrigin: origin) != request.head.authority?.lowercased()
            {
                return Self.refuse(.forbidden, "an action must come from the dashboard's own pages")
            }
        }
        return try await next(request, context)
    }

    func carriesToken(_ request: Request, digest: String) -> Bool {
        if let authorization = request.headers[.authorization], authorization.hasPrefix("Bearer ") {
            return constantTimeEqual(Self.digest(String(authorization.dropFirst("Bearer ".count))), digest)
        }
        if let cookie = request.cookies[Self.cookieName]?.value {
            return constantTimeEqual(cookie, digest)
        }
        return false
    }

    static var fetchSite: HTTPField.Name { HTTPField.Name("Sec-Fetch-Site")! }

    /// The host of an `authority` (`host`, `host:port`, `[v6]:port`), lowercased.
    static func hostName(_ authority: String?) -> String? {
        guard let authority = authority?.lowercased(), !authority.isEmpty else { return nil }
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            return String(authority[authority.index(after: authority.startIndex)..<close])
        }
        return String(authority.split(separator: ":", maxSplits: 1).first ?? "")
    }

    /// `host:port` of an `Origin` value (`http://host:port`), lowercased.
    static func hostAndPort(ofOrigin origin: String) -> String? {
        guard let range = origin.range(of: "://") else { return nil }
        return origin[range.upperBound...].lowercased()
    }

    /// The request's address without its `token` parameter, on this server: one leading slash
    /// (`//host/…` would send the browser to another site).
    static func withoutToken(_ uri: URI) -> String {
        let kept = (uri.query ?? "").split(separator: "&").filter { !$0.hasPrefix("token=") && $0 != "token" }
        let path = "/" + uri.path.drop { $0 == "/" || $0 == "\\" }
        return path + (kept.isEmpty ? "" : "?" + kept.joined(separator: "&"))
    }

    static func refuse(_ status: HTTPResponse.Status, _ message: String) -> Response {
        Dashboard.text(message + "\n", status: status)
    }
}
