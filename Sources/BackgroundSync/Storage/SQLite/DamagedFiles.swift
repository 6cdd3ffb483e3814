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
/// (`<file>.damaged`, naming the file's device and inode), so that other processes refuse to write
/// too; a marker whose file was replaced (another inode) is stale and removed.
enum DamagedFiles {
    private struct Marker: Codable {
        var device: UInt64
        var inode: UInt64
        var message: String
        var seenAt: Date
    }

    /// Damaged files this process saw, by path, with SQLite's message.
    private static let seen = Locked<[String: String]>([:])

    static func markerPath(_ path: String) -> String { path + ".damaged" }

    /// The error every write into a damaged file gets: it names the file and the way out.
    static func error(path: String, message: String) -> BackgroundSyncError {
        BackgroundSyncError(
            .storage,
            "'\(path)' is damaged (\(message)); it takes no more writes: copy what can still be read into a new file "
                + "with `bgsync salvage --db \(path) --to NEW_FILE` (SQLiteQueueDatabase.salvage) and use that file")
    }

    /// Notes that `path` is damaged, in this process and (if the folder can be written) in the
    /// marker file, and returns the error to report.
    static func record(path: String, message: String) -> BackgroundSyncError {
        guard path != ":memory:" else { return error(path: path, message: message) }
        seen.withLock { $0[path] = $0[path] ?? message }
        if let identity = fileIdentity(path),
            let data = try? JSONEncoder().encode(
                Marker(device: identity.device, inode: identity.inode, message: message, seenAt: Date()))
        {
            // Best effort: a reader that may not write the folder still refuses in its own process.
            _ = FileManager.default.createFile(atPath: markerPath(path), contents: data, attributes: [.posixPermissions: 0o644])
        }
        return error(path: path, message: message)
    }

    /// Throws if `path` was found damaged, by this process or (through its marker) another one.
    static func refuseWrites(path: String) throws {
        if let message = seen.withLock({ $0[path] }) { throw error(path: path, message: message) }
    }

    /// At opening for writing: reads the marker of `path`, throws if it names this very file, and
    /// removes it if the file was replaced since.
    static func checkMarker(path: String) throws {
        try refuseWrites(path: path)
        let marker = markerPath(path)
        guard let data = FileManager.default.contents(atPath: marker) else { return }
        guard let found = try? JSONDecoder().decode(Marker.self, from: data) else {
            throw error(path: path, message: "its marker file '\(marker)' says so")
        }
        if let identity = fileIdentity(path), identity.device == found.device, identity.inode == found.inode {
            seen.withLock { $0[path] = found.message }
            throw error(path: path, message: found.message)
        }
        try? FileManager.default.removeItem(atPath: marker)
    }

    private static func fileIdentity(_ path: String) -> (device: UInt64, inode: UInt64)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return (UInt64(truncatingIfNeeded: info.st_dev), UInt64(truncatingIfNeeded: info.st_ino))
    }
}
