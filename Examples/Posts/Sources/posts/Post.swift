import Foundation

/// A post, as the app keeps it and the API stores it. The id is the app's: the API stores a post
/// once per id, so an upload repeated after a crash changes nothing.
struct Post: Codable, Sendable, Identifiable, Equatable {
    var id: UUID
    var title: String
    var content: String
}
