/// The names of the live queues of each database in this process.
enum QueueNameRegistry {
    private static let names = Locked<Set<String>>([])

    /// Reserves `name` on `database`; throws ``BackgroundSyncError/Code/duplicateQueueName`` when a
    /// live queue has it.
    static func reserve(_ name: String, on database: any QueueDatabase) throws -> Reservation {
        let key = database.identity + "\u{0}" + name
        try names.withLock { names in
            guard names.insert(key).inserted else {
                throw BackgroundSyncError(
                    .duplicateQueueName,
                    "a live queue named '\(name)' already uses this database", queueName: name)
            }
        }
        return Reservation(key: key)
    }

    /// A reserved name; ``release()`` frees it once (a queue does so when it goes away), so a late
    /// second call cannot free a name another queue reserved since.
    final class Reservation: Sendable {
        let key: String
        private let released = Locked(false)

        init(key: String) {
            self.key = key
        }

        func release() {
            let first = released.withLock { released -> Bool in
                defer { released = true }
                return !released
            }
            if first {
                _ = QueueNameRegistry.names.withLock { $0.remove(key) }
            }
        }
    }
}
