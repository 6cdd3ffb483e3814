import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Database files found damaged (SQLite reported `SQLITE_CORRUPT`). Such a file takes no more
/// writes: a write into a damaged b-tree can spread the damage, and entries queued into it could
/// end up unreadable behind the damaged page. Reading goes on, and ``SQLiteQueueDatabase/salvage(from:to:)``
/// copies what can be read into a new file.
///
/// The finding is kept in this process and in a marker file next to the database
/// (`<file>.damaged`), so that processes that open the file later refuse to write too. Both name
/// the file by its device and inode: a file moved in place since (a salvaged copy renamed over
/// it) is not refused, and its stale marker is removed; a file this library creates at that path
/// removes the marker too. A process that has the file open already learns of the damage when
/// SQLite reports it to that process.
enum DamagedFiles {
    private struct Identity: Codable, Equatable {
        var device: UInt64
        var inode: UInt64
    }

    private struct Marker: Codable {
        var file: Identity
        var message: String
        var seenAt: Date
    }

    /// Damaged files this process saw, by path: the file's identity then, and SQLite's message.
    private static let seen = Locked<[String: (file: Identity, message: String)]>([:])
    /// Files this process reads as snapshots (immutable URIs): a read there that fails may be a
    /// writer's checkpoint under way, not damage.
    private static let snapshotReads = Locked<Set<String>>([])

    static func markerPath(_ path: String) -> String { path + ".damaged" }

    /// The error every write into a damaged file gets: it names the file and the way out.
    static func error(path: String, message: String) -> BackgroundSyncError {
        BackgroundSyncError(
            .storage,
            "'\(path)' is damaged (\(message)); it takes no more writes: copy what can still be read into a new file "
                + "with `bgsync salvage --db \(path) --to NEW_FILE` (SQLiteQueueDatabase.salvage) and use that file")
    }

    static func noteSnapshotRead(path: String) {
        _ = snapshotReads.withLock { $0.insert(path) }
    }

    /// Notes that `path` is damaged, in this process and (if the folder can be written) in the
    /// marker file, and returns the error to report. A file read as a snapshot is not marked.
    static func record(path: String, message: String) -> BackgroundSyncError {
        if snapshotReads.withLock({ $0.contains(path) }) {
            return BackgroundSyncError(
                .storage,
                "cannot read '\(path)' (\(message)): it changed while it was read without locks (its owner's "
                    + "process started writing), or it is damaged; try again")
        }
        guard path != ":memory:", let file = identity(path) else { return error(path: path, message: message) }
        seen.withLock { $0[path] = $0[path] ?? (file, message) }
        if let data = try? JSONEncoder().encode(Marker(file: file, message: message, seenAt: Date())) {
            // Best effort: a reader that may not write the folder still refuses in its own process.
            _ = FileManager.default.createFile(atPath: markerPath(path), contents: data, attributes: [.posixPermissions: 0o644])
        }
        return error(path: path, message: message)
    }

    /// Throws if `path` was found damaged by this process and is still the same file.
    static func refuseWrites(path: String) throws {
        guard let found = seen.withLock({ $0[path] }) else { return }
        guard identity(path) == found.file else {
            forget(path: path)
            return
        }
        throw error(path: path, message: found.message)
    }

    /// At opening for writing: throws if this process or a marker says the file is damaged, and
    /// removes a marker whose file was replaced since.
    static func checkMarker(path: String) throws {
        try refuseWrites(path: path)
        let marker = markerPath(path)
        guard let data = FileManager.default.contents(atPath: marker) else { return }
        guard let found = try? JSONDecoder().decode(Marker.self, from: data) else {
            throw error(path: path, message: "its marker file '\(marker)' says so")
        }
        if identity(path) == found.file {
            seen.withLock { $0[path] = (found.file, found.message) }
            throw error(path: path, message: found.message)
        }
        try? FileManager.default.removeItem(atPath: marker)
    }

    /// Forgets what was found about `path` (a new file was created there).
    static func forget(path: String) {
        _ = seen.withLock { $0.removeValue(forKey: path) }
        try? FileManager.default.removeItem(atPath: markerPath(path))
    }

    private static func identity(_ path: String) -> Identity? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Identity(device: UInt64(truncatingIfNeeded: info.st_dev), inode: UInt64(truncatingIfNeeded: info.st_ino))
    }
}
