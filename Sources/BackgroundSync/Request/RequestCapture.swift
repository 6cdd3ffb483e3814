import Foundation
import Logging
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Turns a ``QueueEntry`` into what is stored: the request serialised, an `Idempotency-Key` added
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

    /// The key sent in the `Idempotency-Key` header: the request's own, or a new one for POST and
    /// PATCH when ``QueueOptions/addsIdempotencyKey`` is on.
    private func idempotencyKey(for data: inout StorableRequest.RequestData) -> String? {
        if let existing = data.headers["idempotency-key"] { return existing }
        guard options.addsIdempotencyKey, data.method == "POST" || data.method == "PATCH" else { return nil }
        let key = UUID.random().lowercasedString
        data.headers["idempotency-key"] = key
        return key
    }

    /// Applies ``QueueOptions/secretHeaders`` to the request's headers; returns the sealed secrets
    /// to store, if any.
    private func protectSecrets(_ data: inout StorableRequest.RequestData) throws -> Data? {
        if case .plain = options.secretHeaders { return nil }
        let (kept, secrets) = SecretSealer.split(data.headers, names: options.secretHeaderNames)
        guard !secrets.isEmpty else { return nil }
        data.headers = kept
        switch options.secretHeaders {
        case .plain:
            return nil
        case .strip:
            let firstTime = warnedAboutStrippedSecrets.withLock { warned -> Bool in
                defer { warned = true }
                return !warned
            }
            if options.requestWillReplay == nil && firstTime {
                logger.warning(
                    "secret headers are not stored and no requestWillReplay hook adds them back: replays go without them",
                    metadata: ["background-sync.headers": "\(secrets.keys.sorted().joined(separator: ","))"])
            }
            return nil
        case .encrypted(let key):
            return try SecretSealer.seal(secrets, key: key)
        }
    }

    /// Rebuilds the request of a stored entry, its sealed secret header fields opened and put back.
    func rebuild(_ entry: QueueStoreEntry) throws -> URLRequest {
        var request = try StorableRequest(requestData: entry.requestData).toRequest()
        if let sealed = entry.sealedSecrets {
            guard case .encrypted(let key) = options.secretHeaders else {
                throw BackgroundSyncError(
                    .invalidRequest, "the entry has encrypted secret headers but the queue has no key")
            }
            for (field, value) in try SecretSealer.open(sealed, key: key) {
                request.setValue(value, forHTTPHeaderField: field)
            }
        }
        return request
    }
}
