import Crypto
import Foundation

/// What happens to secret header fields (`Authorization`, `Cookie`, `Proxy-Authorization` by
/// default) and to credentials in the URL (`https://user:password@host/…`) when a request is queued.
public enum SecretHeaderStorage: Sendable {
    /// Not written to disk (the default). Add credentials back at replay time with
    /// ``QueueOptions/requestWillReplay``; without that hook a warning is logged once per queue.
    case strip
    /// Written to disk in plain text, like any other header.
    case plain
    /// Sealed with AES-GCM under the app's 256-bit key and stored apart from the other headers;
    /// opened and put back at replay. An entry whose secrets cannot be opened with the key is
    /// dead-lettered (kept, and can be requeued once the right key is configured).
    case encrypted(SymmetricKey)
}

/// Seals and opens the secret header fields of an entry.
enum SecretSealer {
    /// The key, among the sealed fields, of the URL's user information: not a header name (a colon
    /// is not allowed in one).
    static let userInfoKey = ":userinfo"

    /// Splits `url` into the URL without its user information (`user:password@`) and that
    /// information, if any. The rest of the URL is kept byte for byte.
    static func splitUserInfo(_ url: String) -> (url: String, userInfo: String?) {
        let utf8 = url.utf8
        guard let authority = authorityRange(url), let at = utf8[authority].lastIndex(of: UInt8(ascii: "@")) else {
            return (url, nil)
        }
        let userInfo = text(utf8[authority.lowerBound..<at])
        return (text(utf8[..<authority.lowerBound]) + text(utf8[utf8.index(after: at)...]), userInfo)
    }

    /// `url` with `userInfo` put back in front of its host.
    static func insertUserInfo(_ userInfo: String, into url: String) -> String {
        guard let authority = authorityRange(url) else { return url }
        return text(url.utf8[..<authority.lowerBound]) + userInfo + "@" + text(url.utf8[authority.lowerBound...])
    }

    /// Where the authority (`user:password@host:port`) of an absolute URL is: after its scheme
    /// and `://`, up to the first `/`, `?` or `#`; `nil` for a URL without a scheme followed by
    /// `//`. Found in the UTF-8 bytes (the delimiters are ASCII), so that the parts around it are
    /// cut byte for byte.
    private static func authorityRange(_ url: String) -> Range<String.Index>? {
        let utf8 = url.utf8
        let slash = UInt8(ascii: "/")
        guard let colon = utf8.firstIndex(of: UInt8(ascii: ":")), URLScheme.isValid(url[..<colon]),
            utf8[utf8.index(after: colon)...].starts(with: [slash, slash])
        else { return nil }
        let start = utf8.index(colon, offsetBy: 3)
        let end = utf8[start...].firstIndex { $0 == slash || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") } ?? utf8.endIndex
        return start..<end
    }

    /// The text of bytes of a string cut at ASCII characters.
    private static func text(_ bytes: Substring.UTF8View) -> String {
        String(Substring(bytes))
    }

    /// Splits `headers` into the fields that may be stored and the secret ones.
    static func split(_ headers: [String: String], names: Set<String>) -> (kept: [String: String], secrets: [String: String]) {
        // The usual case, on every push: no secret header; the headers are kept as they are.
        guard headers.keys.contains(where: names.contains) else { return (headers, [:]) }
        var kept: [String: String] = [:]
        var secrets: [String: String] = [:]
        for (name, value) in headers {
            if names.contains(name) { secrets[name] = value } else { kept[name] = value }
        }
        return (kept, secrets)
    }

    static func seal(_ secrets: [String: String], key: SymmetricKey) throws -> Data {
        let plain = try JSONEncoder().encode(secrets)
        guard let combined = try AES.GCM.seal(plain, using: key).combined else {
            throw BackgroundSyncError(.invalidRequest, "cannot seal the secret headers")
        }
        return combined
    }

    static func open(_ sealed: Data, key: SymmetricKey) throws -> [String: String] {
        let box = try AES.GCM.SealedBox(combined: sealed)
        return try JSONDecoder().decode([String: String].self, from: try AES.GCM.open(box, using: key))
    }
}
