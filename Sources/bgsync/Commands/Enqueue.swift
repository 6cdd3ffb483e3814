import ArgumentParser
import BackgroundSync
import Foundation

/// `bgsync enqueue URL ...`: stores a request without trying the network.
struct Enqueue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Store a request in a queue without trying the network; print its id.",
        discussion: """
            Example:
              bgsync enqueue https://api.example.com/posts --queue posts \\
                -H 'Content-Type: application/json' -d '{"title":"Hello"}'
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var request: RequestOptions

    func run() async throws {
        try await reportingErrors {
            let urlRequest = try request.request()
            try await database.withDatabase(.create) { db in
                let queue = try Queue(name: request.queue, options: request.queueOptions, database: db)
                if request.dropsSecrets {
                    printError("warning: secret headers and URL credentials are not stored; pass --store-secrets to keep them")
                }
                print(try await queue.pushRequest(urlRequest))
            }
        }
    }
}
