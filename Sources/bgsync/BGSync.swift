import ArgumentParser

/// `bgsync`: inspect and drive swift-background-sync queues from the command line.
@main
struct BGSync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bgsync",
        abstract: "Store HTTP requests that failed and replay them later, durably.",
        discussion: """
            bgsync works on the SQLite database of swift-background-sync queues. \
            Start with `bgsync demo` to watch a request go offline → queued → online → delivered.
            """,
        version: "0.1.0",
        subcommands: [Demo.self]
    )
}
