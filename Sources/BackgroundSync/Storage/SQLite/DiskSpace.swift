import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Room on the file system of a database, for when the disk is full.
///
/// Deleting is how space comes back, and in WAL mode a deletion, too, appends pages to the WAL
/// first: on a full disk even `purge` would fail. And the WAL grows until a checkpoint (every
/// 1,000 pages), which on a small disk may never come. So a write that meets a full disk
/// checkpoints the WAL into the database and truncates it, giving its space back — releasing the
/// reserve for the checkpoint if it needs room to grow the database file, and making the reserve
/// again from what the WAL gave back — and tries again. A write that is not a push may then use
/// the reserve itself, and try once more. The reserve is a file of
/// ``SQLiteQueueDatabase/Configuration/diskReserve`` bytes next to
/// the database (`<file>.reserve`), made when the database is opened for writing and made again
/// once there is room. Pushes never keep its space: it is held for what frees space.
final class DiskReserve: Sendable {
    let path: String
    let size: Int
    /// The reserve was released and is to be made again when there is room.
    private let released = Locked(false)

    init(databasePath: String, size: Int) {
        path = databasePath + ".reserve"
        self.size = size
    }

    /// Makes the reserve if it is missing (best effort: on a full disk it waits for room). The
    /// bytes are written, not a sparse file, so that the space is really held.
    func ensure() {
        if FileManager.default.fileExists(atPath: path) {
            excludeFromBackups()
            released.withLock { $0 = false }
            return
        }
        // Not worth trying (writing up to `size` bytes) without the room for it.
        if let free = SQLiteQueueDatabase.freeBytes(near: path), free < size { return }
        let temporary = path + ".tmp-" + UUID().uuidString
        guard Self.allocate(temporary, size: size), rename(temporary, path) == 0 else {
            try? FileManager.default.removeItem(atPath: temporary)
            return
        }
        excludeFromBackups()
        released.withLock { $0 = false }
    }

    /// Room, not data: not worth a place in the device's backups.
    private func excludeFromBackups() {
        #if canImport(Darwin)
        var url = URL(fileURLWithPath: path)
        var values = URLResourceValues()
        values.isExcludedFromBackup = true
        try? url.setResourceValues(values)
        #endif
    }

    /// Creates a new file (never follows a link, never reuses a file) of `size` bytes whose blocks
    /// are allocated: `posix_fallocate` where the file system has it (a file of zeros would take
    /// no room on one that compresses), else zeros.
    private static func allocate(_ path: String, size: Int) -> Bool {
        let descriptor = open(path, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        #if canImport(Glibc)
        if posix_fallocate(descriptor, 0, off_t(size)) == 0 { return true }
        #endif
        let zeros = [UInt8](repeating: 0, count: 64 << 10)
        var written = 0
        while written < size {
            let count = zeros.withUnsafeBytes { write(descriptor, $0.baseAddress, min(zeros.count, size - written)) }
            guard count > 0 else { return false }
            written += count
        }
        return true
    }

    /// Deletes the reserve; returns whether there was one.
    func release() -> Bool {
        guard (try? FileManager.default.removeItem(atPath: path)) != nil else { return false }
        released.withLock { $0 = true }
        return true
    }

    /// After a write that succeeded: makes the reserve again if it was released.
    func restoreIfReleased() {
        if released.withLock({ $0 }) { ensure() }
    }
}

extension SQLiteQueueDatabase {
    /// Runs a write transaction; on a full disk, truncates the WAL and tries again, then (unless
    /// `reserve` is `nil`) releases the reserve and tries once more.
    static func makingRoom<T>(_ db: Database, path: String, reserve: DiskReserve?, _ attempt: () throws -> T) throws -> T {
        do {
            let result = try attempt()
            reserve?.restoreIfReleased()
            return result
        } catch where isDiskFull(error, path: path) {
            truncateWAL(db, path: path, reserve: reserve)
            do {
                return try attempt()
            } catch where isDiskFull(error, path: path) {
                guard let reserve, reserve.release() else { throw error }
                // Whether it succeeds or not, the WAL gives the room back and the reserve is
                // made again (a failed attempt's frames stay in the WAL file until truncated).
                defer {
                    truncateWAL(db, path: path, reserve: nil)
                    reserve.ensure()
                }
                return try attempt()
            }
        }
    }

    /// Checkpoints the whole WAL into the database and truncates it to nothing (if no reader holds
    /// an older snapshot). A checkpoint may grow the database file: if it fails for room, and the
    /// WAL is more than twice the reserve (truncating it gives back more than it takes), the
    /// reserve is released for it and made again from the room the WAL gave back.
    static func truncateWAL(_ db: Database, path: String, reserve: DiskReserve?) {
        if (try? db.checkpoint(.truncate)) != nil { return }
        guard let reserve, let walSize = (try? FileManager.default.attributesOfItem(atPath: path + "-wal"))?[.size] as? Int,
            walSize > 2 * reserve.size, reserve.release()
        else { return }
        _ = try? db.checkpoint(.truncate)
        reserve.ensure()
    }

    /// Whether an error means the disk is full: SQLite's `SQLITE_FULL`, or an I/O error on a file
    /// system with (almost) no room left (creating the `-shm` file reports an I/O error).
    static func isDiskFull(_ error: any Error, path: String) -> Bool {
        if let error = error as? BackgroundSyncError { return error.underlying is DiskFull }
        guard let error = error as? DatabaseError else { return false }
        switch error.resultCode {
        case .SQLITE_FULL: return true
        case .SQLITE_IOERR, .SQLITE_CANTOPEN: return (freeBytes(near: path) ?? .max) < 64 << 10
        default: return false
        }
    }

    /// The bytes free on the file system holding `path` (or its folder).
    static func freeBytes(near path: String) -> Int? {
        let url = URL(fileURLWithPath: path)
        for candidate in [url.path, url.deletingLastPathComponent().path] {
            if let free = (try? FileManager.default.attributesOfFileSystem(forPath: candidate))?[.systemFreeSize] as? NSNumber {
                return free.intValue
            }
        }
        return nil
    }

    /// The error for a full disk: what could not be done, and what to free.
    static func diskFullError(path: String, action: String) -> BackgroundSyncError {
        let free = freeBytes(near: path).map { bytes in
            bytes < 1 << 20 ? "\(bytes >> 10) KiB free" : "\(bytes >> 20) MiB free"
        } ?? "no room"
        return BackgroundSyncError(
            .storage,
            "cannot \(action) '\(path)' (\(free); free space on its file system — deleting entries with "
                + "`bgsync purge` or `bgsync delete` works even now)",
            underlying: DiskFull())
    }
}

/// The underlying error of a write a full disk had no room for; it ends the error's description.
struct DiskFull: Error, CustomStringConvertible {
    var description: String { "the disk is full" }
}
