// README snippets that use the AsyncHTTPClient transport (see ReadmeSnippets.swift).
import BackgroundSync
import BackgroundSyncAsyncHTTPClient

enum ReadmeAsyncHTTPClientSnippets {
    static func transport() throws {
        // README: begin
        let webhooks = try Queue(name: "webhooks", transport: AsyncHTTPClientTransport())
        // README: end
        _ = webhooks
    }
}
