import Foundation

/// Keeps sync registrations and runs the sync of a tag when an event is dispatched: the
/// counterpart of the browser's `SyncManager` plus the `sync` event dispatch.
///
/// Registrations are persisted in the ``QueueDatabase`` when the manager has one, so that a
/// restarted process, or another process on the same file, sees them. Queues add themselves as the
/// handlers of their tag.
///
/// Rules (the Background Sync spec's, which Workbox relies on):
/// - a sync that succeeds consumes its registration;
/// - a sync that fails keeps it for a retry, unless the event was the `lastChance`;
/// - a tag registered again *while* its sync runs stays registered whatever the outcome;
/// - a queue's sync (its own replay, not a custom `onSync`) that succeeds, or fails on its last
///   chance, while the queue still holds pending entries (behind a head set aside, pushed
///   meanwhile by another process, held by another replayer) keeps its registration too.
public final class SyncManager: Sendable {
    /// A handler for the events of one tag.
    typealias Handler = @Sendable (SyncEvent) async throws -> Void

    private struct State {
        var memoryTags: [String] = []
        var handlers: [String: (token: UUID, queueName: String?, handler: Handler)] = [:]
        /// Tags whose sync runs now, and whether they were registered again meanwhile.
        var firing: [String: Bool] = [:]
        var watchers: [UUID: AsyncStream<String>.Continuation] = [:]
    }

    /// Where registrations are persisted; `nil` keeps them in memory.
    public let database: (any QueueDatabase)?
    private let state = Locked(State())

    /// Creates a manager that persists registrations in `database` (in memory when `nil`).
    public init(database: (any QueueDatabase)? = nil) {
        self.database = database
    }

    /// Held weakly: the queues hold their manager, and a manager no queue uses may go (its
    /// registrations stay in the database), taking its database with it.
    private struct WeakManager {
        weak var manager: SyncManager?
    }

    private static let sharedManagers = Locked<[String: WeakManager]>([:])

    /// The process-wide manager of a database: queues that are not given a manager use it, so one
    /// `dispatch` reaches every queue of the database.
    public static func shared(for database: any QueueDatabase) -> SyncManager {
        sharedManagers.withLock { managers in
            if let manager = managers[database.identity]?.manager { return manager }
            managers = managers.filter { $0.value.manager != nil }
            let manager = SyncManager(database: database)
            managers[database.identity] = WeakManager(manager: manager)
            return manager
        }
    }

    /// Registers `tag` for a sync. Registering a registered tag does nothing.
    public func register(_ tag: String) async throws {
        if let database {
            try await database.registerSyncTag(tag, at: Date())
        } else {
            state.withLock { state in
                if !state.memoryTags.contains(tag) { state.memoryTags.append(tag) }
            }
        }
        noteRegistered(tag)
    }

    /// Whether registrations are kept in `database` (then a queue registers its tag in the same
    /// transaction as the entry it stores).
    func persists(in database: any QueueDatabase) -> Bool {
        self.database?.identity == database.identity
    }

    /// Records that `tag` was registered (by ``register(_:)`` or with an entry's insert): a sync
    /// running for it must not consume the new registration, and watchers learn about it.
    func noteRegistered(_ tag: String) {
        let watchers = state.withLock { state -> [AsyncStream<String>.Continuation] in
            if state.firing[tag] != nil { state.firing[tag] = true }
            return Array(state.watchers.values)
        }
        watchers.forEach { $0.yield(tag) }
    }

    /// A stream of the tags registered from now on in this process (a ``SyncService`` uses it to
    /// run a sync as soon as one is registered while online, as browsers do).
    public func registrations() -> AsyncStream<String> {
        let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(256))
        let id = UUID()
        state.withLock { $0.watchers[id] = continuation }
        continuation.onTermination = { [state] _ in
            _ = state.withLock { $0.watchers.removeValue(forKey: id) }
        }
        return stream
    }

    /// The registered tags, oldest first.
    public func getTags() async throws -> [String] {
        if let database {
            return try await database.syncTags()
        }
        return state.withLock { $0.memoryTags }
    }

    /// Whether a live handler (a queue) handles `tag` in this process.
    public func hasHandler(for tag: String) -> Bool {
        state.withLock { $0.handlers[tag] != nil }
    }

    /// Runs the sync of `event.tag` now (what DevTools' "Sync" button does) and applies the
    /// registration rules to the outcome. Throws the handler's error, or
    /// ``BackgroundSyncError/Code/unknownSyncTag`` when no live queue handles the tag.
    public func dispatch(_ event: SyncEvent) async throws {
        try await run(event)
    }

    /// ``dispatch(_:)``, telling whether a sync that succeeded kept its registration because its
    /// queue still holds pending entries.
    @discardableResult
    func run(_ event: SyncEvent) async throws -> Bool {
        guard let (handler, queueName) = state.withLock({ $0.handlers[event.tag].map { ($0.handler, $0.queueName) } }) else {
            throw BackgroundSyncError(.unknownSyncTag, "no queue handles the sync tag '\(event.tag)'")
        }
        state.withLock { $0.firing[event.tag] = false }
        let outcome: Result<Void, any Error>
        do {
            try await handler(event)
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        let registeredAgain = state.withLock { $0.firing.removeValue(forKey: event.tag) ?? false }
        switch outcome {
        case .success:
            if registeredAgain { return false }
            // Across processes the in-memory flag above sees nothing: the store keeps the
            // registration while the queue holds pending entries, atomically with the pushes.
            if let database, let queueName {
                return try await !database.unregisterSyncTag(event.tag, ifNoPendingEntriesIn: queueName)
            }
            try await unregister(event.tag)
            return false
        case .failure(let error):
            if event.lastChance && !registeredAgain {
                // The last chance of the head entry (it is set aside now): the entries behind it,
                // and those other processes pushed meanwhile, keep the registration.
                if let database, let queueName {
                    _ = try await database.unregisterSyncTag(event.tag, ifNoPendingEntriesIn: queueName)
                } else {
                    try await unregister(event.tag)
                }
            }
            throw error
        }
    }

    /// Dispatches an event for every registered tag that has a handler in this process, in
    /// registration order (what a browser does at start-up). Returns the tags whose sync failed,
    /// with the errors.
    @discardableResult
    public func dispatchRegistered(lastChance: Bool = false) async throws -> [String: any Error] {
        var failures: [String: any Error] = [:]
        for tag in try await getTags() where hasHandler(for: tag) {
            do {
                try await dispatch(SyncEvent(tag: tag, lastChance: lastChance))
            } catch {
                failures[tag] = error
            }
        }
        return failures
    }

    private func unregister(_ tag: String) async throws {
        if let database {
            try await database.unregisterSyncTag(tag)
        } else {
            state.withLock { $0.memoryTags.removeAll { $0 == tag } }
        }
    }

    /// Installs the handler of a tag (the sync of the queue `queueName`, when it is one); fails if
    /// another live handler has it.
    func addHandler(tag: String, token: UUID, queueName: String? = nil, _ handler: @escaping Handler) throws {
        try state.withLock { state in
            if state.handlers[tag] != nil {
                throw BackgroundSyncError(.duplicateQueueName, "another live queue handles the sync tag '\(tag)'")
            }
            state.handlers[tag] = (token, queueName, handler)
        }
    }

    /// Removes the handler of a tag if it is still the one installed with `token`.
    func removeHandler(tag: String, token: UUID) {
        state.withLock { state in
            if state.handlers[tag]?.token == token { state.handlers[tag] = nil }
        }
    }
}
