import Foundation

/// A stored request as an operator may see it: the header fields that carry credentials and the
/// password of a URL are masked. `bgsync show`, the dashboard and replay messages show requests
/// through it.
public enum MaskedRequest {
    /// Header fields whose values are never shown (compared without case).
    public static let maskedFields: Set<String> = ["authorization", "cookie", "proxy-authorization"]

    /// What is shown instead of a secret.
    public static let mask = "(masked)"

    /// The request's header fields with secrets masked; when the entry holds sealed secret fields,
    /// a field `(encrypted secret headers)` says so.
    public static func headers(of entry: QueueStoreEntry) -> [String: String] {
        var headers = entry.requestData.headers
        for name in headers.keys where maskedFields.contains(name.lowercased()) { headers[name] = mask }
        if entry.sealedSecrets != nil { headers["(encrypted secret headers)"] = mask }
        return headers
    }

    /// `url` with the password of its user information masked (`https://user:(masked)@host/…`);
    /// the rest byte for byte.
    public static func url(_ url: String) -> String {
        guard let scheme = url.range(of: "://") else { return url }
        let rest = url[scheme.upperBound...]
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        guard let at = rest[..<authorityEnd].lastIndex(of: "@") else { return url }
        let userInfo = rest[..<at]
        let user = userInfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let masked = userInfo.contains(":") ? "\(user):\(mask)" : String(user)
        return String(url[..<scheme.upperBound]) + masked + String(rest[at...])
    }
}
