import Foundation

/// When a failed entry is tried again: exponential backoff with full jitter, `Retry-After`
/// honoured, and an optional attempt limit.
///
/// After the n-th failed attempt of an entry (n ≥ 1) the next attempt is due after a random delay
/// in `0...min(maxDelay, initialDelay × multiplier^(n-1))` ("full jitter", so that many clients
/// that failed together do not come back together). A `Retry-After` from the server (seconds or
/// an HTTP date) is a floor: the delay is never shorter than what the server asked for.
public struct RetryPolicy: Sendable, Hashable {
    /// The backoff ceiling after the first failure. Default: 2 seconds.
    public var initialDelay: Duration
    /// The factor between consecutive ceilings. Default: 2.
    public var multiplier: Double
    /// The largest ceiling. Default: 10 minutes.
    public var maxDelay: Duration
    /// Draw the delay at random below the ceiling (full jitter). Default: `true`; `false` waits the
    /// ceiling itself.
    public var jitter: Bool
    /// How many failed attempts an entry may have before it is dead-lettered (kept, with its last
    /// error) instead of retried; `nil` retries until ``QueueOptions/maxRetentionTime``.
    /// Default: `nil`.
    public var maxAttempts: Int?

    /// Creates a policy; every parameter has its default.
    public init(
        initialDelay: Duration = .seconds(2),
        multiplier: Double = 2,
        maxDelay: Duration = .seconds(600),
        jitter: Bool = true,
        maxAttempts: Int? = nil
    ) {
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
        self.jitter = jitter
        self.maxAttempts = maxAttempts
    }

    /// The upper bound of the delay after `attempts` failed attempts (≥ 1).
    public func ceiling(afterAttempts attempts: Int) -> Duration {
        let exponent = Double(max(attempts, 1) - 1)
        let seconds = initialDelay.timeInterval * pow(multiplier, exponent)
        return .milliseconds(Int64(min(seconds, maxDelay.timeInterval) * 1000))
    }

    /// The delay before the next attempt after `attempts` failed attempts, given the server's
    /// `Retry-After` (already parsed), drawing jitter from `random`.
    public func delay(
        afterAttempts attempts: Int, retryAfter: Duration? = nil,
        using random: inout some RandomNumberGenerator
    ) -> Duration {
        let ceiling = ceiling(afterAttempts: attempts)
        var delay = ceiling
        if jitter {
            let milliseconds = Int64(ceiling.timeInterval * 1000)
            delay = .milliseconds(milliseconds > 0 ? Int64.random(in: 0...milliseconds, using: &random) : 0)
        }
        if let retryAfter, retryAfter > delay { delay = retryAfter }
        return delay
    }

    /// Whether an entry that has failed `attempts` times may be tried again.
    public func allowsAnotherAttempt(afterAttempts attempts: Int) -> Bool {
        guard let maxAttempts else { return true }
        return attempts < maxAttempts
    }

    /// Whether the next attempt of an entry that failed `attempts` times is its last one (the
    /// `lastChance` of its sync event).
    public func isLastAttempt(afterAttempts attempts: Int) -> Bool {
        guard let maxAttempts else { return false }
        return attempts + 1 >= maxAttempts
    }

    /// Parses a `Retry-After` value: delay-seconds (`120`) or an HTTP date
    /// (`Wed, 21 Oct 2026 07:28:00 GMT`, also the obsolete RFC 850 and asctime forms) relative to `now`.
    /// Returns `nil` for a value that is neither.
    public static func parseRetryAfter(_ value: String, now: Date) -> Duration? {
        let text = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Int64(text), seconds >= 0 {
            return .seconds(seconds)
        }
        for format in httpDateFormats {
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = format
            if let date = formatter.date(from: text) {
                let seconds = date.timeIntervalSince(now)
                return .milliseconds(Int64(max(seconds, 0) * 1000))
            }
        }
        return nil
    }

    private static let httpDateFormats = [
        "EEE, dd MMM yyyy HH:mm:ss zzz",
        "EEEE, dd-MMM-yy HH:mm:ss zzz",
        "EEE MMM d HH:mm:ss yyyy",
    ]
}
