#if canImport(BackgroundTasks) && !os(macOS) && !os(watchOS)
@preconcurrency import BackgroundTasks
import Foundation

/// Runs a ``SyncService``'s due syncs from an iOS, iPadOS, tvOS or visionOS background task, so that
/// queued requests go out while the app is suspended.
///
/// ```swift
/// // Info.plist: BGTaskSchedulerPermittedIdentifiers = ["com.example.app.sync"],
/// //             UIBackgroundModes = ["processing"] (both are required)
/// let backgroundSync = BackgroundTaskSync(identifier: "com.example.app.sync", service: service)
/// backgroundSync.register()          // before the app finishes launching
/// // when the app goes to the background:
/// try await backgroundSync.schedule()
/// // or, in a task of the app's, each time something is queued:
/// await backgroundSync.scheduleWhenQueued()
/// ```
///
/// The task runs ``SyncService/runDueSyncs()``; the system's expiration cancels it (the replays
/// give their entries back untouched); then the next task is scheduled for
/// ``SyncService/nextDueDate()``. The decisions are the service's, tested on every platform; this
/// type only hands them to `BGTaskScheduler`.
public struct BackgroundTaskSync: Sendable {
    /// The task identifier, listed in the app's `BGTaskSchedulerPermittedIdentifiers`.
    public let identifier: String
    /// The service whose due syncs the task runs.
    public let service: SyncService

    /// Creates the hook.
    public init(identifier: String, service: SyncService) {
        self.identifier = identifier
        self.service = service
    }

    /// Registers the task's launch handler. Call it before the app finishes launching, once.
    /// Returns `false` when the identifier is not permitted in Info.plist.
    ///
    /// The handler first submits the next request (so that one stands even if the system expires
    /// this task), then runs the due syncs, then submits again for the new next due date.
    @discardableResult
    public func register() -> Bool {
        let hook = self
        return BGTaskScheduler.shared.register(forTaskWithIdentifier: identifier, using: nil) { task in
            let task = SendableTask(task)
            // The system calls this handler synchronously and ends the task when told to: the work
            // needs a task of its own, which the expiration handler cancels.
            let work = Task {
                await hook.scheduleLogging()
                let outcome = await Result(catching: { try await hook.service.runDueSyncs() })
                if !Task.isCancelled { await hook.scheduleLogging() }
                task.task.setTaskCompleted(success: (try? outcome.get()) != nil && !Task.isCancelled)
            }
            task.task.expirationHandler = { work.cancel() }
        }
    }

    /// Submits a request to run the task at ``SyncService/nextDueDate()``, needing a network
    /// connection; when no sync waits, cancels the one submitted before. A new request replaces an
    /// earlier one.
    public func schedule() async throws {
        guard let due = try await service.nextDueDate() else {
            // Nothing waits: withdraw a request made while something did.
            BGTaskScheduler.shared.cancel(taskRequestWithIdentifier: identifier)
            return
        }
        let request = BGProcessingTaskRequest(identifier: identifier)
        request.requiresNetworkConnectivity = true
        request.earliestBeginDate = due
        try BGTaskScheduler.shared.submit(request)
    }
}

extension BackgroundTaskSync {
    /// Schedules the task each time a sync is registered (a request queued, a record saved), until
    /// the calling task is cancelled: run it in a task of the app's, such as SwiftUI's `.task { }`.
    public func scheduleWhenQueued() async {
        guard let manager = service.syncManager else { return }
        for await _ in manager.registrations() {
            await scheduleLogging()
        }
    }

    /// ``schedule()``, its failure logged (a request `BGTaskScheduler` refuses — an identifier
    /// missing from Info.plist, `UIBackgroundModes` without `processing` — is said, not swallowed).
    func scheduleLogging() async {
        do {
            try await schedule()
        } catch {
            service.configuration.logger.warning(
                "cannot schedule the background sync task",
                metadata: ["task": "\(identifier)", "error": "\(error)"])
        }
    }
}

/// A `BGTask` handed from the launch handler to the work it starts. `@unchecked Sendable`: the
/// task object is only told to complete, and given its expiration handler, which BackgroundTasks
/// allows from any thread.
private struct SendableTask: @unchecked Sendable {
    let task: BGTask
    init(_ task: BGTask) { self.task = task }
}
#endif
