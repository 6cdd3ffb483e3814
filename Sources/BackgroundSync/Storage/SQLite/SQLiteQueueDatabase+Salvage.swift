import Foundation
import GRDB

/// What ``SQLiteQueueDatabase/salvage(from:to:)`` copied.
public struct SalvageReport: Sendable, Hashable {
    /// Entries copied, each with its queue, position, state, attempts, idempotency key, metadata
    /// and last failure.
    public var salvaged: Int
    /// Entries, or ids on damaged pages, that could not be read, and rows the new file refused (a
    /// garbled value its constraints reject). When an index of the damaged file could be read
    /// whole, the first are exactly the entries it lists that could not be read; otherwise, the
    /// ids on damaged pages between two readable ones (an upper bound: ids deleted before the
    /// damage count too).
    public var unreadable: Int
    /// Of the entries copied, those with a field the damage garbled (a state, a URL, header
    /// fields that do not decode): copied as dead letters, with the reason as their last failure,
    /// for a person to look at, requeue or delete.
    public var setAside: Int
    /// The queues the new file holds.
    public var queues: [String]
}

extension SQLiteQueueDatabase {
    /// Copies every entry that can still be read from a damaged database file into a new one,
    /// leaving the damaged file untouched (it is opened read-only).
    ///
    /// Entries keep their id, queue, position, state, attempts, next attempt, idempotency key,
    /// metadata, sealed secrets and last failure; leases are dropped. Queues, their ends and the
    /// sync registrations are copied when they can be read. Entries are found by every way that
    /// still works — the table read forwards and backwards up to the damage, each index, and each
    /// id in between — the model of SQLite's own recovery (`.recover`). Blocks the calling
    /// thread while it reads and writes.
    ///
    /// - Parameters:
    ///   - damaged: The damaged file.
    ///   - destination: A file that does not exist yet.
    /// - Throws: ``BackgroundSyncError/Code/storage`` when the destination exists or cannot be
    ///   written, or when nothing of the damaged file can be read (its first page, which holds the
    ///   schema, is damaged).
    public static func salvage(from damaged: String, to destination: String) throws -> SalvageReport {
        guard FileManager.default.fileExists(atPath: damaged) else {
            throw BackgroundSyncError(.storage, "no database at '\(damaged)'")
        }
        guard !FileManager.default.fileExists(atPath: destination) else {
            throw BackgroundSyncError(.storage, "'\(destination)' exists: salvage writes a new file")
        }
        var configuration = GRDB.Configuration()
        configuration.readonly = true
        let source: DatabaseQueue
        let found: SalvagedRows
        do {
            let openPath = canReadAsSnapshot(damaged) ? snapshotURI(damaged) : damaged
            source = try DatabaseQueue(path: openPath, configuration: configuration)
            // Outside a transaction: an error of SQLite's on a damaged page rolls back the
            // transaction it happens in, and each statement below reads what it can on its own.
            found = try source.inDatabase { db in try SalvagedRows(db) }
            try source.close()
        } catch {
            throw BackgroundSyncError(
                .storage, "cannot read '\(damaged)' at all (\(describe(error))): nothing can be salvaged")
        }
        // Written under another name and moved in place once complete: a salvage that fails
        // leaves no half-written destination behind.
        let partial = destination + ".partial-" + UUID().uuidString
        let outcome: (copied: Int, setAside: Int, unwritable: Int)
        do {
            let target = try SQLiteQueueDatabase(path: partial, configuration: .init(diskReserve: 0))
            outcome = try target.writer.write { db in try found.insert(into: db) }
            try target.close()
            try FileManager.default.moveItem(atPath: partial, toPath: destination)
        } catch {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: partial + suffix) }
            throw mapError(error, path: destination, action: "write to")
        }
        return SalvageReport(
            salvaged: outcome.copied, unreadable: found.unreadable + outcome.unwritable, setAside: outcome.setAside,
            queues: found.queueNames)
    }

    private static func describe(_ error: any Error) -> String {
        (error as? DatabaseError)?.message ?? "\(error)"
    }
}

/// The rows of a damaged file that could be read.
private struct SalvagedRows {
    /// Entry columns as the damaged file has them, and their values, one array per entry.
    var entryColumns: [String] = []
    var entries: [[DatabaseValue]] = []
    var queues: [Row] = []
    var registrations: [Row] = []
    var lastEntryID: Int64?
    /// The highest id any scan read.
    var highestID: Int64?
    var unreadable = 0

    /// The entry columns copied, `id` and `queueName` first; leases are left behind.
    static let columns = [
        "id", "queueName", "position", "url", "method", "headers", "body", "settings", "timestamp", "metadata",
        "state", "attempts", "nextAttemptAt", "lastStatus", "lastError", "lastResponseExcerpt", "idempotencyKey",
        "sealedSecrets", "lastFailureKind", "recordKey",
    ]

    /// The most ids probed one by one between the readable ends of the table.
    static let probeLimit: Int64 = 10_000_000

    init(_ db: Database) throws {
        // The schema is on the first page: if it cannot be read, nothing can.
        let known = Set(try String.fetchAll(db, sql: "SELECT name FROM pragma_table_info('entry')"))
        guard !known.isEmpty else { throw BackgroundSyncError(.storage, "no entry table") }
        entryColumns = Self.columns.filter(known.contains)
        queues = Self.readable(db, "SELECT * FROM queue")
        registrations = Self.readable(db, "SELECT * FROM syncRegistration")
        lastEntryID = try? Int64.fetchOne(db, sql: "SELECT seq FROM sqlite_sequence WHERE name = 'entry'")

        // Ids, from every way that still reads: the table forwards and backwards, each index.
        let forwards = Self.ids(db, "SELECT id FROM entry ORDER BY id")
        let backwards = Self.ids(db, "SELECT id FROM entry ORDER BY id DESC")
        var ids = Set(forwards.ids).union(backwards.ids)
        var indexed: Set<Int64>?
        for index in (try? String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'entry'")) ?? [] {
            let quoted = "\"" + index.replacingOccurrences(of: "\"", with: "\"\"") + "\""
            let scan = Self.ids(db, "SELECT id FROM entry INDEXED BY \(quoted)")
            ids.formUnion(scan.ids)
            // A partial index lists only some entries; the order index lists all.
            if scan.complete, index == "entry_order" { indexed = Set(scan.ids) }
        }
        highestID = ids.max()
        let columns = entryColumns.map { "\"\($0)\"" }.joined(separator: ", ")
        let read = try db.makeStatement(sql: "SELECT \(columns) FROM entry WHERE id = ?")
        var failed = 0
        func readEntry(_ id: Int64) {
            do {
                if let row = try Row.fetchOne(read, arguments: [id]) {
                    entries.append(entryColumns.map { row[$0] as DatabaseValue })
                }
            } catch {
                if indexed == nil || indexed?.contains(id) == true { failed += 1 }
            }
        }
        // Between the ends the table could be read to, each id is also tried on its own (up to
        // the last id the file gave out when nothing could be read backwards).
        // Garbled ids (near the ends of Int64) must not overflow: such a range is not probed.
        let low = forwards.ids.last ?? 0
        let high = backwards.ids.last ?? (lastEntryID ?? low).addingReportingOverflow(1).partialValue
        let span = high.subtractingReportingOverflow(low)
        let probing = !forwards.complete && high > low && !span.overflow && span.partialValue > 1
            && span.partialValue <= Self.probeLimit
        for id in ids.sorted() where !probing || id <= low { readEntry(id) }
        if probing {
            for id in (low + 1)..<high { readEntry(id) }
        }
        for id in ids.sorted() where probing && id >= high { readEntry(id) }
        if let indexed {
            let copied = Set(entries.compactMap { Int64.fromDatabaseValue($0[0]) })
            unreadable = indexed.subtracting(copied).count
        } else {
            unreadable = failed
        }
    }

    /// A column of a row read from the damaged file, if it has the type asked for (a garbled
    /// value is `nil`, never a crash).
    private static func value<T: DatabaseValueConvertible>(_ row: Row, _ column: String) -> T? {
        guard let value = row[column] as DatabaseValue? else { return nil }
        return T.fromDatabaseValue(value)
    }

    var queueNames: [String] {
        let names = Set(queues.compactMap { Self.value($0, "name") as String? })
            .union(entries.compactMap { String.fromDatabaseValue($0[1]) })
        return names.sorted()
    }

    /// Writes the rows into the new file: each entry on its own (a garbled row that the new
    /// file's constraints refuse is counted, not fatal). Returns how many entries were copied,
    /// set aside, and refused.
    func insert(into db: Database) throws -> (copied: Int, setAside: Int, unwritable: Int) {
        for name in queueNames {
            let row = queues.first { (Self.value($0, "name") as String?) == name }
            try db.execute(
                sql: "INSERT INTO queue(name, headPosition, tailPosition) VALUES (?, ?, ?)",
                arguments: [
                    name, row.flatMap { Self.value($0, "headPosition") as Int64? } ?? 1,
                    row.flatMap { Self.value($0, "tailPosition") as Int64? } ?? 0,
                ])
        }
        for row in registrations {
            guard let tag = Self.value(row, "tag") as String?, let date = Self.value(row, "registeredAt") as Double? else { continue }
            try db.execute(sql: "INSERT OR IGNORE INTO syncRegistration(tag, registeredAt) VALUES (?, ?)", arguments: [tag, date])
        }
        let columns = entryColumns.map { "\"\($0)\"" }.joined(separator: ", ")
        let placeholders = Array(repeating: "?", count: entryColumns.count).joined(separator: ", ")
        let insert = try db.makeStatement(sql: "INSERT INTO entry(\(columns)) VALUES (\(placeholders))")
        var copied: [Int64] = []
        var unwritable = 0
        for values in entries {
            do {
                try db.inSavepoint {
                    try insert.execute(arguments: StatementArguments(values))
                    return .commit
                }
                if let id = Int64.fromDatabaseValue(values[0]) { copied.append(id) }
            } catch let error as DatabaseError
                where [.SQLITE_CONSTRAINT, .SQLITE_MISMATCH, .SQLITE_TOOBIG].contains(error.resultCode)
            {
                // A garbled row the new file's constraints refuse; any other error ends the salvage.
                unwritable += 1
            }
        }
        // New ids go on after the damaged file's last one, so none is given twice (a garbled
        // counter far beyond the ids read is not trusted).
        let highest = highestID ?? 0
        let counter = lastEntryID.flatMap { $0 >= highest && $0 - highest <= Self.probeLimit ? $0 : nil }
        let last = max(counter ?? 0, highest)
        try db.execute(sql: "DELETE FROM sqlite_sequence WHERE name = 'entry'")
        try db.execute(sql: "INSERT INTO sqlite_sequence(name, seq) VALUES ('entry', ?)", arguments: [last])
        // A row read from a damaged page may hold garbled fields: each entry is read back as a
        // replay would, and one that does not decode is set aside with the reason.
        var setAside = 0
        let readBack = try db.makeStatement(
            sql: "SELECT \(SQLiteQueueDatabase.EntryColumn.list) FROM entry WHERE id = ?")
        for id in copied {
            guard let row = try Row.fetchOne(readBack, arguments: [id]) else { continue }
            let problem: String
            do {
                let entry = try SQLiteQueueDatabase.decode(row)
                _ = try StorableRequest(requestData: entry.requestData)
                continue
            } catch {
                problem = (error as? BackgroundSyncError)?.message ?? "\(error)"
            }
            try db.execute(
                sql: """
                    UPDATE entry SET state = 'dead', lastFailureKind = ?, lastStatus = NULL, lastError = ?,
                    lastResponseExcerpt = NULL, nextAttemptAt = NULL WHERE id = ?
                    """,
                arguments: [ReplayFailure.Kind.unreadableEntry.rawValue, "salvaged from a damaged file: \(problem)", id])
            setAside += 1
        }
        return (copied.count, setAside, unwritable)
    }

    /// The rows a statement reads before it meets the damage.
    private static func readable(_ db: Database, _ sql: String) -> [Row] {
        var rows: [Row] = []
        guard let cursor = try? Row.fetchCursor(db, sql: sql) else { return rows }
        while let row = try? cursor.next() { rows.append(row.copy()) }
        return rows
    }

    /// The ids a statement reads, and whether it read to the end.
    private static func ids(_ db: Database, _ sql: String) -> (ids: [Int64], complete: Bool) {
        var ids: [Int64] = []
        guard let cursor = try? Int64.fetchCursor(db, sql: sql) else { return (ids, false) }
        while true {
            do {
                guard let id = try cursor.next() else { return (ids, true) }
                ids.append(id)
            } catch {
                return (ids, false)
            }
        }
    }
}
