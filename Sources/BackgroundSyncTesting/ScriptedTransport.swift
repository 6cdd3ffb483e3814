import BackgroundSync
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// An ``HTTPTransport`` whose answers a test scripts, call by call: fail as if offline, answer with
/// a status, hang until cancelled or released, or pass the request to a real transport. It records
/// every request, and lets a test wait for calls instead of sleeping.
///
/// ```swift
/// let transport = ScriptedTransport()
/// transport.script(.answer(status: 503), .fail(URLError(.notConnectedToInternet)))
/// transport.script(.answer(status: 201), times: 3)
/// ```
/// Calls beyond the script get ``whenUnscripted``.
public final class ScriptedTransport: HTTPTransport {
    /// What one call does.
    public enum Step: Sendable {
        /// Throws `error`: no response (a queue retries the entry later).
        case fail(any Error)
        /// Answers with a status, header fields and a body.
        case answer(status: Int, headers: [String: String] = [:], body: Data = Data())
        /// Waits until the calling task is cancelled (then throws `URLError(.cancelled)`, as
        /// `URLSession` does) or ``releaseHanging(with:)`` is called.
        case hang
        /// Sends the request through the base transport.
        case passThrough
    }

    private struct State {
        var script: [Step] = []
        var requests: [URLRequest] = []
        var hanging: [UUID: CheckedContinuation<Step, Never>] = [:]
        var callWatchers: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var hangWatchers: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }

    /// Where ``Step/passThrough`` sends requests.
    public let base: (any HTTPTransport)?
    /// What a call beyond the script does.
    public let whenUnscripted: Step
    private let state = Locked(State())

    /// Creates a transport; `base` serves ``Step/passThrough`` (default: none, which makes that
    /// step fail), `whenUnscripted` the calls beyond the script (default: `200 OK`).
    public init(base: (any HTTPTransport)? = nil, whenUnscripted: Step = .answer(status: 200)) {
        self.base = base
        self.whenUnscripted = whenUnscripted
    }

    /// Appends steps to the script.
    public func script(_ steps: Step...) {
        state.withLock { $0.script += steps }
    }

    /// Appends one step `times` times to the script.
    public func script(_ step: Step, times: Int) {
        state.withLock { $0.script += Array(repeating: step, count: times) }
    }

    /// The requests received so far, in order.
    public var requests: [URLRequest] { state.withLock { $0.requests } }

    /// How many calls were made so far.
    public var callCount: Int { state.withLock { $0.requests.count } }

    /// How many calls hang now.
    public var hangingCount: Int { state.withLock { $0.hanging.count } }

    /// Returns once at least `count` calls were made.
    public func waitForCalls(_ count: Int) async {
        await wait(until: \.callWatchers, count: count) { $0.requests.count }
    }

    /// Returns once at least `count` calls hang at the same time.
    public func waitForHanging(_ count: Int = 1) async {
        await wait(until: \.hangWatchers, count: count) { $0.hanging.count }
    }

    private func wait(
        until watchers: WritableKeyPath<State, [(count: Int, continuation: CheckedContinuation<Void, Never>)]>,
        count: Int, current: @escaping (State) -> Int
    ) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state -> Bool in
                if current(state) >= count { return true }
                state[keyPath: watchers].append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Resumes the watchers in `watchers` whose count is reached.
    private static func due(
        _ watchers: inout [(count: Int, continuation: CheckedContinuation<Void, Never>)], reached count: Int
    ) -> [CheckedContinuation<Void, Never>] {
        defer { watchers.removeAll { $0.count <= count } }
        return watchers.filter { $0.count <= count }.map(\.continuation)
    }

    /// Lets every hanging call go on with `step`.
    public func releaseHanging(with step: Step = .answer(status: 200)) {
        let hanging = state.withLock { state in
            defer { state.hanging = [:] }
            return Array(state.hanging.values)
        }
        hanging.forEach { $0.resume(returning: step) }
    }

    public func send(_ request: URLRequest) async throws -> ServerResponse {
        let (step, watchers) = state.withLock { state -> (Step, [CheckedContinuation<Void, Never>]) in
            state.requests.append(request)
            let step = state.script.isEmpty ? whenUnscripted : state.script.removeFirst()
            return (step, Self.due(&state.callWatchers, reached: state.requests.count))
        }
        watchers.forEach { $0.resume() }
        return try await perform(step, request)
    }

    private func perform(_ step: Step, _ request: URLRequest) async throws -> ServerResponse {
        switch step {
        case .fail(let error):
            throw error
        case .answer(let status, let headers, let body):
            return ServerResponse(status: status, headers: headers, body: body)
        case .passThrough:
            guard let base else { throw URLError(.unsupportedURL) }
            return try await base.send(request)
        case .hang:
            return try await perform(try await hang(), request)
        }
    }

    /// Waits for ``releaseHanging(with:)`` or cancellation.
    private func hang() async throws -> Step {
        let id = UUID()
        let step = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Step, Never>) in
                let (cancelled, watchers) = state.withLock { state -> (Bool, [CheckedContinuation<Void, Never>]) in
                    if Task.isCancelled { return (true, []) }
                    state.hanging[id] = continuation
                    return (false, Self.due(&state.hangWatchers, reached: state.hanging.count))
                }
                watchers.forEach { $0.resume() }
                if cancelled { continuation.resume(returning: .fail(URLError(.cancelled))) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.hanging.removeValue(forKey: id) }
            waiter?.resume(returning: .fail(URLError(.cancelled)))
        }
        return step
    }
}
