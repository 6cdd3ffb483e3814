import Foundation

/// Decides what a replay does with an entry once the server answered.
public struct ReplayClassifier: Sendable {
    private let classify: @Sendable (ServerResponse) -> ReplayDecision

    /// A classifier from a closure.
    public init(_ classify: @escaping @Sendable (ServerResponse) -> ReplayDecision) {
        self.classify = classify
    }

    /// Classifies a response.
    public func callAsFunction(_ response: ServerResponse) -> ReplayDecision {
        classify(response)
    }

    /// The default: ``ReplayDecision/forStatus(_:)``.
    public static let `default` = ReplayClassifier { .forStatus($0.status) }

    /// Workbox's behaviour: any response, 4xx and 5xx included, counts as delivered; only a missing
    /// response is retried.
    public static let anyResponseIsSuccess = ReplayClassifier { _ in .delivered }
}
