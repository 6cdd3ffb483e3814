import ArgumentParser
import BackgroundSync
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `bgsync send URL ...`: tries now, queues on failure.
struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send a request now; if it cannot be delivered, store it in a queue for later.",
        discussion: """
            Prints what happened. Exit status: 0 when sent or queued, 3 when queued and \
            --fail-on-queue is given, 5 when the server refused it (a 4xx other than \
            401/403/408/425/429, 501, 505: retrying would not help, so it is not queued), 2 for \
            bad input, 4 when the database cannot be used.

            Example:
              bgsync send https://api.example.com/posts --queue posts -d '{"title":"Hello"}'
            """)

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var request: RequestOptions

    @Flag(help: "Exit with status 3 when the request was queued instead of sent.")
    var failOnQueue = false

    @Option(help: "Seconds to wait for the server before queueing.")
    var timeout: Double = 30

    func validate() throws {
        guard timeout > 0, timeout <= 3600 else {
            throw ValidationError("--timeout must be between 0 and 3600 seconds")
        }
    }

    func run() async throws {
        try await reportingErrors {
            var urlRequest = try request.request()
            urlRequest.timeoutInterval = timeout
            let queued = try await database.withDatabase(.create) { db -> Bool in
                let queue = try Queue(name: request.queue, options: request.queueOptions, database: db)
                if request.dropsSecrets {
                    printError("warning: secret headers and URL credentials are sent now but not stored; pass --store-secrets to keep them for a replay")
                }
                switch try await queue.send(urlRequest) {
                case .sent(let response) where ReplayDecision.forStatus(response.status) == .deadLetter:
                    print("refused by the server: HTTP \(response.status) (not queued)")
                    throw ExitStatus.refused
                case .sent(let response):
                    print("sent: HTTP \(response.status)")
                    return false
                case .queued(let id, let reason):
                    print("queued as entry \(id) in '\(request.queue)' (\(reason))")
                    return true
                }
            }
            if queued && failOnQueue { throw ExitStatus.queued }
        }
    }
}
