// README snippets that only Apple platforms compile (see ReadmeSnippets.swift).
import BackgroundSync

#if canImport(SwiftUI)
import SwiftUI

// README: begin
struct PendingBadge: View {
    let queue: Queue
    @State private var pending = 0

    var body: some View {
        Text(pending == 0 ? "All sent" : "\(pending) waiting to sync")
            .task { for await size in queue.sizes() { pending = size } }
    }
}
// README: end
#endif

#if canImport(BackgroundTasks) && !os(macOS) && !os(watchOS)
enum ReadmeBackgroundTaskSnippets {
    static func backgroundTasks(service: SyncService) async {
        // README: begin
        let backgroundSync = BackgroundTaskSync(identifier: "com.example.app.sync", service: service)
        backgroundSync.register()                 // before the app finishes launching
        await backgroundSync.scheduleWhenQueued() // in a task of the app's: schedules after each push
        // README: end
    }
}
#endif
