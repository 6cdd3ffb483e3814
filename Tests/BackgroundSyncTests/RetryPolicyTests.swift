import BackgroundSync
import BackgroundSyncTesting
import Foundation
import Testing

/// A deterministic generator for jitter tests.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("RetryPolicy")
struct RetryPolicyTests {
    @Test func defaultsAreDocumented() {
        let policy = RetryPolicy()
        #expect(policy.initialDelay == .seconds(2))
        #expect(policy.multiplier == 2)
        #expect(policy.maxDelay == .seconds(600))
        #expect(policy.jitter)
        #expect(policy.maxAttempts == nil)
    }

    @Test func ceilingsGrowExponentiallyUpToTheCap() {
        let policy = RetryPolicy(initialDelay: .seconds(2), multiplier: 2, maxDelay: .seconds(60))
        #expect((1...7).map { policy.ceiling(afterAttempts: $0) } == [2, 4, 8, 16, 32, 60, 60].map { .seconds($0) })
    }

    @Test func fullJitterStaysBelowTheCeilingAndSpreads() {
        let policy = RetryPolicy(initialDelay: .seconds(10))
        var random = SeededGenerator(state: 42)
        let delays = (0..<200).map { _ in policy.delay(afterAttempts: 3, using: &random) }
        #expect(delays.allSatisfy { $0 >= .zero && $0 <= .seconds(40) })
        #expect(Set(delays).count > 150)
        #expect(delays.contains { $0 < .seconds(10) } && delays.contains { $0 > .seconds(30) })

        var same = SeededGenerator(state: 1)
        let fixed = RetryPolicy(initialDelay: .seconds(10), jitter: false)
        #expect(fixed.delay(afterAttempts: 2, using: &same) == .seconds(20))
    }

    @Test func retryAfterIsAFloor() {
        var random = SeededGenerator(state: 7)
        let policy = RetryPolicy(initialDelay: .seconds(1), jitter: false)
        #expect(policy.delay(afterAttempts: 1, retryAfter: .seconds(120), using: &random) == .seconds(120))
        #expect(policy.delay(afterAttempts: 5, retryAfter: .seconds(3), using: &random) == .seconds(16))
    }

    @Test func retryAfterParsesSecondsAndHTTPDates() {
        let now = Date(timeIntervalSince1970: 1_445_412_480)  // Wed, 21 Oct 2015 07:28:00 GMT
        #expect(RetryPolicy.parseRetryAfter("120", now: now) == .seconds(120))
        #expect(RetryPolicy.parseRetryAfter(" 0 ", now: now) == .seconds(0))
        #expect(RetryPolicy.parseRetryAfter("Wed, 21 Oct 2015 07:30:00 GMT", now: now) == .seconds(120))
        #expect(RetryPolicy.parseRetryAfter("Wednesday, 21-Oct-15 07:29:00 GMT", now: now) == .seconds(60))
        #expect(RetryPolicy.parseRetryAfter("Wed Oct 21 07:28:30 2015", now: now) == .seconds(30))
        #expect(RetryPolicy.parseRetryAfter("Wed, 21 Oct 2015 07:00:00 GMT", now: now) == .seconds(0))
        #expect(RetryPolicy.parseRetryAfter("soon", now: now) == nil)
        #expect(RetryPolicy.parseRetryAfter("-5", now: now) == nil)
    }

    @Test func attemptLimitAndLastChance() {
        let policy = RetryPolicy(maxAttempts: 3)
        #expect(policy.allowsAnotherAttempt(afterAttempts: 2))
        #expect(!policy.allowsAnotherAttempt(afterAttempts: 3))
        #expect(!policy.isLastAttempt(afterAttempts: 1))
        #expect(policy.isLastAttempt(afterAttempts: 2))
        #expect(!RetryPolicy().isLastAttempt(afterAttempts: 1000))
    }
}
