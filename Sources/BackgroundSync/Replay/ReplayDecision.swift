import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// What a replay does with an entry once the server answered.
public enum ReplayDecision: Sendable, Hashable {
    /// The server accepted the request: the entry is deleted.
    case delivered
    /// The server cannot take it now: the entry stays at the head with one more attempt counted,
    /// and replay stops.
    case retry
    /// The server wants (new) credentials: the entry stays, replay stops until the app provides them.
    case pauseForAuthentication
    /// Retrying cannot help: the entry is set aside as a dead letter (kept, listed), replay goes on.
    case deadLetter

    /// The default classification of a status code:
    /// - 1xx, 2xx, 3xx: ``delivered``;
    /// - 401, 403: ``pauseForAuthentication``;
    /// - 408, 425, 429 and every 5xx but 501 and 505: ``retry``;
    /// - other 4xx, 501, 505: ``deadLetter``.
    public static func forStatus(_ status: Int) -> ReplayDecision {
        switch status {
        case ..<400:
            return .delivered
        case 401, 403:
            return .pauseForAuthentication
        case 408, 425, 429:
            return .retry
        case 501, 505:
            return .deadLetter
        case 500...:
            return .retry
        default:
            return .deadLetter
        }
    }
}
