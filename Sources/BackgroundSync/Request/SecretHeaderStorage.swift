import Crypto
import Foundation

/// What happens to secret header fields (`Authorization`, `Cookie`, `Proxy-Authorization` by
/// default) when a request is queued.
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
