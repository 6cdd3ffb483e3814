import Foundation
import GRDB

extension SQLiteQueueDatabase {
    /// How durable a write is (see ``QueueDatabase``).
    enum Durability {
        /// Committed with the configured mode (`FULL` by default): on disk before the call returns.
        case durable
        /// Replay bookkeeping, committed with `NORMAL`: survives a crash of the process.
        case crashSafe
    }

    /// Runs `body` in a transaction on the writer's queue, without blocking the caller's thread
    /// (the writer may wait for a commit's fsync, a checkpoint or another process's lock). The write
    /// completes even if the calling task is cancelled: GRDB's async accessors would give up with
    /// `CancellationError`, and a replay gives its leases back from a cancelled task. On a full
    /// disk it makes room and tries again (see ``DiskReserve``); a write that adds data (an
    /// outbox save) passes `mayUseReserve: false`, since the reserve is held for what frees space.
    func write<T: Sendable>(
        _ action: String, _ durability: Durability = .durable, mayUseReserve: Bool = true,
        truncatingWALAfter: Bool = false, _ body: @escaping @Sendable (Database) throws -> T
    ) async throws -> T {
        let (writer, path, synchronous) = (writer, path, synchronous)
        let reserve = mayUseReserve ? reserve : nil
        let mode = durability == .durable ? synchronous.durable : synchronous.bookkeeping
        return try await withUnsafeThrowingContinuation { continuation in
            writer.asyncWriteWithoutTransaction { db in
                do {
                    let result = try Self.makingRoom(db, path: path, reserve: reserve) {
                        try synchronous.transaction(mode, db) { try body(db) }
                    }
                    if truncatingWALAfter { Self.truncateWAL(db, path: path, reserve: reserve) }
                    continuation.resume(returning: result)
                } catch {
                    continuation.resume(throwing: Self.mapError(error, path: path, action: action, modes: synchronous))
                }
            }
        }
    }

    /// Runs `body` in a read transaction. A cancelled task gets `CancellationError`.
    func read<T: Sendable>(_ action: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await writer.read(body)
        } catch let error as CancellationError {
            throw error
        } catch let error as DatabaseError where error.resultCode == .SQLITE_INTERRUPT && Task.isCancelled {
            throw CancellationError()
        } catch {
            throw Self.mapError(error, path: path, action: action, snapshot: readsSnapshot, modes: synchronous)
        }
    }

    /// How many ids one statement of ``execute(_:ids:leading:trailing:_:)`` takes.
    static let idBatch = 32
    /// The placeholders of ``idBatch`` ids, for an `IN` list.
    static let idList = Array(repeating: "?", count: idBatch).joined(separator: ", ")

    /// Runs a change whose SQL has an `IN (\(idList))` list for the ids in the open transaction,
    /// in statements of ``idBatch`` ids (the last list padded with its own first id, so that each SQL
    /// text is one cached statement), with `leading` arguments before the list and `trailing`
    /// ones after it; returns how many rows it changed (for an `UPDATE`, an id given twice in
    /// different statements counts twice). Running a statement costs about as much as changing a
    /// row, so the rows go a few dozen to a statement, not one each.
    @discardableResult
    static func execute(
        _ sql: String, ids: some Collection<Int64>, leading: [any DatabaseValueConvertible] = [],
        trailing: [any DatabaseValueConvertible] = [], _ db: Database
    ) throws -> Int {
        guard !ids.isEmpty else { return 0 }
        let statement = try db.cachedStatement(sql: sql)
        var changed = 0
        var batch: [any DatabaseValueConvertible] = []
        batch.reserveCapacity(leading.count + idBatch + trailing.count)
        var rest = ids[...]
        while !rest.isEmpty {
            let chunk = rest.prefix(idBatch)
            rest = rest.dropFirst(chunk.count)
            batch.removeAll(keepingCapacity: true)
            batch += leading
            for id in chunk { batch.append(id) }
            // Within one statement a repeated id changes its row once.
            for _ in chunk.count..<idBatch { batch.append(chunk.first!) }
            batch += trailing
            try statement.execute(arguments: StatementArguments(batch))
            changed += db.changesCount
        }
        return changed
    }

    /// How many entries one ``leased(among:to:)`` checks at most: one ``idList``.
    static let leaseCheckLimit = idBatch
    private static let leaseCheckSQL = """
        SELECT id FROM entry WHERE id IN (\(Array(repeating: "?", count: leaseCheckLimit).joined(separator: ", "))) AND state = 'pending' AND leaseOwner = ?
        """

    /// Which of these entries (at most ``leaseCheckLimit``) are pending and leased to `owner`: the
    /// check a replay makes before it hands out entries it leased ahead. It runs often, so on a file
    /// it is one statement on a read-only connection of its own, in the caller's thread, without a
    /// transaction (a single `SELECT` is atomic): GRDB's pooled async read hops to a reader's queue
    /// and back and wraps the statement in a transaction, and a blocking read from the pool could
    /// wait for a reader held by an async read that needs this very thread to finish. In WAL mode
    /// this connection never waits for the writer, and nothing else uses it.
    func leased(among ids: [Int64], to owner: String) async throws -> Set<Int64> {
        precondition(!ids.isEmpty && ids.count <= Self.leaseCheckLimit, "checks 1 to \(Self.leaseCheckLimit) entries")
        // One statement text whatever the count: the list is padded with its first id.
        let padded = ids + Array(repeating: ids[0], count: Self.leaseCheckLimit - ids.count)
        let arguments = StatementArguments(padded + [owner] as [any DatabaseValueConvertible])
        @Sendable func check(_ db: Database) throws -> Set<Int64> {
            Set(try Int64.fetchAll(try db.cachedStatement(sql: Self.leaseCheckSQL), arguments: arguments))
        }
        guard writer is DatabasePool else { return try await read("read", check) }
        do {
            return try Self.readBlocking(try leaseChecker(), check)
        } catch {
            throw Self.mapError(error, path: path, action: "read", modes: synchronous)
        }
    }

    /// The read-only connection of ``leased(among:to:)``, opened the first time.
    private func leaseChecker() throws -> DatabaseQueue {
        try leaseCheckConnection.withLock { connection in
            if let connection { return connection }
            var configuration = GRDB.Configuration()
            configuration.readonly = true
            configuration.busyMode = .timeout(busyTimeout.timeInterval)
            configuration.label = "BackgroundSync.leaseCheck"
            let opened = try DatabaseQueue(path: path, configuration: configuration)
            connection = opened
            return opened
        }
    }

    /// GRDB's blocking read without a transaction (the async overload would be chosen in an async
    /// context).
    private static func readBlocking<T>(_ reader: any DatabaseReader, _ body: (Database) throws -> T) throws -> T {
        try reader.unsafeRead(body)
    }

    /// The writer connection's `PRAGMA synchronous`, set per transaction: durable writes commit with
    /// the configured mode (FULL by default: on disk before the call returns), replay bookkeeping
    /// with NORMAL (it survives a crash of the process; after a power cut the last of it may be
    /// rolled back, so a request already delivered can be sent once more, with its
    /// `Idempotency-Key`). The next durable commit or checkpoint makes it durable too (a sync of
    /// the WAL covers every earlier commit). Browsers make the same trade for Workbox's deletions
    /// (IndexedDB's relaxed durability).
    final class SynchronousModes: Sendable {
        let durable: String
        let bookkeeping = Configuration.Synchronous.normal.rawValue
        /// The mode the writer connection is in; read and changed on the writer only.
        private let current: Locked<String>
        /// The database file, which takes no write once found damaged (``DamagedFiles``), and the
        /// file it was when opened.
        private let path: String
        let file: DamagedFiles.Identity?

        /// Damage met in the file this instance opened after another file was moved to its path
        /// (see ``DamagedFiles/record(path:message:file:noteOpened:)``): only this instance knows.
        private let damage = Locked<String?>(nil)

        init(durable: Configuration.Synchronous, path: String) {
            self.durable = durable.rawValue
            current = Locked(durable.rawValue)
            self.path = path
            file = path == ":memory:" ? nil : DamagedFiles.identity(path)
        }

        /// Notes damage met in the file this instance opened, no longer at its path.
        func noteDamaged(_ message: String) {
            damage.withLock { $0 = $0 ?? message }
        }

        /// Sets `mode` on the writer connection if needed, then runs `body` in a transaction.
        /// Every write goes through here; none goes to a file found damaged.
        func transaction<T>(_ mode: String, _ db: Database, _ body: () throws -> T) throws -> T {
            try DamagedFiles.refuseWrites(path: path, file: file)
            if let message = damage.withLock({ $0 }) { throw DamagedFiles.error(path: path, message: message) }
            if current.withLock({ $0 }) != mode {
                try db.execute(sql: "PRAGMA synchronous = \(mode)")
                current.withLock { $0 = mode }
            }
            var result: T?
            try db.inTransaction {
                result = try body()
                return .commit
            }
            guard let result else { throw BackgroundSyncError(.storage, "transaction returned no result") }
            return result
        }
    }

    /// One push waiting for its group commit. A class: the writer moves batches of them around
    /// (one retain each rather than one per field).
    final class PendingPush: Sendable {
        let row: EntryRow
        let queueName: String
        let end: QueueEnd
        let syncTag: String?

        init(row: EntryRow, queueName: String, end: QueueEnd, syncTag: String?) {
            self.row = row
            self.queueName = queueName
            self.end = end
            self.syncTag = syncTag
        }
    }

    /// The group commit of pushes: each batch is one durable transaction on the writer's queue
    /// that inserts the entries and registers their sync tags. Gathering concurrent pushes pays
    /// because a durable commit waits for the disk (see ``GroupCommit``).
    static func makePushes(
        writer: any DatabaseWriter, path: String, synchronous: SynchronousModes,
        undeletedDeliveries: Locked<[String: Set<Int64>]>, reserve: DiskReserve?
    ) -> GroupCommit<Database, PendingPush, PushedEntry> {
        let openEnds = OpenEnds([:])
        // The sync tags the open transaction registered: a gathered batch writes each tag once,
        // not once per arrival.
        let openTags = Locked<Set<String>>([])
        let gatherDelay: (@Sendable (Duration) -> Duration)?
        if synchronous.durable == Configuration.Synchronous.normal.rawValue {
            gatherDelay = nil
        } else {
            gatherDelay = { min($0, .milliseconds(10)) }
        }
        return GroupCommit(
            gatherDelay: gatherDelay,
            schedule: { work in writer.asyncWriteWithoutTransaction { db in work(db) } },
            transaction: { db, writes in
                openEnds.withLock { $0.removeAll(keepingCapacity: true) }
                openTags.withLock { $0.removeAll(keepingCapacity: true) }
                do {
                    try synchronous.transaction(synchronous.durable, db) { try writes() }
                } catch {
                    // On a full disk, the WAL gives its space back; the group commit then tries
                    // each push again on its own. Pushes never keep the reserve's space.
                    if isDiskFull(error, path: path) { truncateWAL(db, path: path, reserve: reserve) }
                    throw mapError(error, path: path, action: "write to", modes: synchronous)
                }
            },
            append: { db, batch in
                do {
                    var pushed = try insert(batch, db, openEnds: openEnds)
                    // The sizes leave out deliveries not deleted yet (while a replay runs).
                    let replaying = !undeletedDeliveries.withLock { $0.isEmpty }
                    for queueName in replaying ? Set(batch.map(\.queueName)) : [] {
                        let hidden = undeletedIDs(queueName, in: undeletedDeliveries)
                        guard !hidden.isEmpty else { continue }
                        let undeleted = try pendingCount(of: hidden, db)
                        for index in batch.indices where batch[index].queueName == queueName {
                            pushed[index].size = max(pushed[index].size - undeleted, 0)
                        }
                    }
                    let registeredAt = Date().timeIntervalSince1970
                    for item in batch {
                        guard let tag = item.syncTag, openTags.withLock({ $0.insert(tag).inserted }) else { continue }
                        try registerSyncTag(tag, at: registeredAt, db)
                    }
                    return pushed
                } catch {
                    throw mapError(error, path: path, action: "write to", modes: synchronous)
                }
            })
    }
}
