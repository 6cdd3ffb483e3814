import Foundation
import Logging
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Turns a ``QueueEntry`` into what is stored: the request serialised, an idempotency key added
/// to POST and PATCH, and secret header fields stripped or sealed, as ``QueueOptions`` say.
struct RequestCapture: Sendable {
    let options: QueueOptions
    let logger: Logger
    private let warnedAboutStrippedSecrets = Locked(false)

    init(options: QueueOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    /// The entry to store. Throws ``BackgroundSyncError/Code/invalidRequest`` for a request that
    /// cannot be stored.
    func capture(_ entry: QueueEntry) throws -> UnidentifiedQueueStoreEntry {
        var requestData = try StorableRequest.fromRequest(entry.request).toObject()
        let idempotencyKey = idempotencyKey(for: &requestData)
        let sealedSecrets = try protectSecrets(&requestData)
        return UnidentifiedQueueStoreEntry(
            requestData: requestData, timestamp: entry.timestamp, metadata: entry.metadata,
            idempotencyKey: idempotencyKey, sealedSecrets: sealedSecrets)
    }

    /// The key sent in the idempotency key header: the request's own, or a new one for POST and
    /// PATCH when ``QueueOptions/addsIdempotencyKey`` is on.
    private func idempotencyKey(for data: inout StorableRequest.RequestData) -> String? {
        let field = options.idempotencyKeyHeader.lowercased()
        if let existing = data.headers[field] { return existing }
        guard needsIdempotencyKey(method: data.method) else { return nil }
        let key = newIdempotencyKey()
        data.headers[field] = key
        return key
    }

    private func needsIdempotencyKey(method: String) -> Bool {
        options.addsIdempotencyKey && (method == "POST" || method == "PATCH")
    }

    private func newIdempotencyKey() -> String {
        options.idempotencyKeyFormat.headerValue(UUID.random().lowercasedString)
    }

    /// `request` with an idempotency key header added when ``capture(_:)`` would add one, so that
    /// a live attempt and every replay of the request carry the same key.
    func addingIdempotencyKey(to request: URLRequest) -> URLRequest {
        let method = (request.httpMethod ?? "GET").uppercased()
        guard needsIdempotencyKey(method: method),
            request.value(forHTTPHeaderField: options.idempotencyKeyHeader) == nil
        else { return request }
        var request = request
        request.setValue(newIdempotencyKey(), forHTTPHeaderField: options.idempotencyKeyHeader)
        return request
    }

    /// Applies ``QueueOptions/secretHeaders`` to the request's secret headers and to the
    /// credentials in its URL; returns the sealed secrets to store, if any.
    private func protectSecrets(_ data: inout StorableRequest.RequestData) throws -> Data? {
        if case .plain = options.secretHeaders { return nil }
        var (kept, secrets) = SecretSealer.split(data.headers, names: options.secretHeaderNames)
        let (url, userInfo) = SecretSealer.splitUserInfo(data.url)
        if let userInfo { secrets[SecretSealer.userInfoKey] = userInfo }
        guard !secrets.isEmpty else { return nil }
        data.headers = kept
        data.url = url
        switch options.secretHeaders {
        case .plain:
            return nil
        case .strip:
            let firstTime = warnedAboutStrippedSecrets.withLock { warned -> Bool in
                defer { warned = true }
                return !warned
            }
            if options.requestWillReplay == nil && firstTime {
                let names = secrets.keys.sorted().map { $0 == SecretSealer.userInfoKey ? "URL credentials" : $0 }
                logger.warning(
                    "secret headers and URL credentials are not stored and no requestWillReplay hook adds them back: replays go without them",
                    metadata: ["background-sync.headers": "\(names.joined(separator: ","))"])
            }
            return nil
        case .encrypted(let key):
            return try SecretSealer.seal(secrets, key: key)
        }
    }

    /// Rebuilds the request of a stored entry, its sealed secret header fields opened and put back.
    func rebuild(_ entry: QueueStoreEntry) throws -> URLRequest {
        guard let sealed = entry.sealedSecrets else { return try StorableRequest(requestData: entry.requestData).toRequest() }
        guard case .encrypted(let key) = options.secretHeaders else {
            throw BackgroundSyncError(
                .invalidRequest, "the entry has encrypted secret headers but the queue has no key")
        }
        var secrets = try SecretSealer.open(sealed, key: key)
        var data = entry.requestData
        if let userInfo = secrets.removeValue(forKey: SecretSealer.userInfoKey) {
            data.url = SecretSealer.insertUserInfo(userInfo, into: data.url)
        }
        var request = try StorableRequest(requestData: data).toRequest()
        for (field, value) in secrets {
            request.setValue(value, forHTTPHeaderField: field)
        }
        return request
    }
}
