import Foundation

extension Queue {
    /// The entries set aside as dead letters, in queue order, with their last failure.
    public func deadLetters() async throws -> [QueueStoreEntry] {
        try await store.getDeadLetters()
    }

    /// Puts a dead letter back in the queue, at its old position with its attempts reset, and
    /// registers a sync. Throws ``BackgroundSyncError/Code/entryNotFound`` if this queue has no
    /// dead letter with that id.
    public func requeueDeadLetter(id: Int64) async throws {
        guard try await database.requeueDeadEntries(queueName: name, ids: [id]) == 1 else {
            throw BackgroundSyncError(.entryNotFound, "no dead letter with id \(id)", queueName: name, entryID: id)
        }
        await registerSync()
    }

    /// Puts every dead letter back in the queue and registers a sync; returns how many.
    @discardableResult
    public func requeueAllDeadLetters() async throws -> Int {
        let count = try await database.requeueDeadEntries(queueName: name, ids: nil)
        if count > 0 { await registerSync() }
        return count
    }

    /// Deletes a dead letter. Throws ``BackgroundSyncError/Code/entryNotFound`` if this queue has
    /// no dead letter with that id.
    public func deleteDeadLetter(id: Int64) async throws {
        try await delete(id: id, state: .dead)
    }

    /// Deletes every dead letter; returns how many.
    @discardableResult
    public func deleteAllDeadLetters() async throws -> Int {
        try await database.deleteEntries(queueName: name, state: .dead)
    }

    /// Sets a pending entry aside as a dead letter with `reason` (kind ``ReplayFailure/Kind/setAside``):
    /// the way to unblock an ordered queue whose head can never be delivered (a host that no longer
    /// exists) without losing the request. It keeps its position and can be requeued. Throws
    /// ``BackgroundSyncError/Code/entryNotFound`` if this queue has no pending entry with that id.
    public func setAside(id: Int64, reason: String = "set aside by an operator") async throws {
        let failure = ReplayFailure(kind: .setAside, message: reason)
        guard try await database.setAsideEntries(queueName: name, ids: [id], failure: failure) == 1 else {
            throw BackgroundSyncError(.entryNotFound, "no pending entry with id \(id)", queueName: name, entryID: id)
        }
        await reporter.deadLettered(id, failure: failure)
    }

    /// Deletes a pending entry (one that must never be sent). Throws
    /// ``BackgroundSyncError/Code/entryNotFound`` if this queue has no pending entry with that id.
    public func deletePendingEntry(id: Int64) async throws {
        try await delete(id: id, state: .pending)
    }

    private func delete(id: Int64, state: EntryState) async throws {
        guard let entry = try await database.entry(id: id), entry.queueName == name, entry.state == state,
            try await database.deleteEntry(id: id)
        else {
            let what = state == .dead ? "dead letter" : "pending entry"
            throw BackgroundSyncError(.entryNotFound, "no \(what) with id \(id)", queueName: name, entryID: id)
        }
    }
}
