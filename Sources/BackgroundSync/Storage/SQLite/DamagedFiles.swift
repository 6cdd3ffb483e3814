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
/// A finding names the file by its device and inode, in this process (each instance refuses
/// writes into the file it opened) and in a marker file next to the database (`<file>.damaged`),
/// so that processes that open the file later refuse to write too. The process that finds the
/// damage keeps the damaged file open until it ends (when it can open it), so that its inode is
/// not given to a new file meanwhile, which this process, or another one that trusts the marker,
/// would refuse (a damaged file deleted meanwhile frees its space when that process ends; once it
/// ended, a file another program creates at the path may get the inode and be refused by the
/// marker). A file moved in place since (a salvaged copy renamed over it) is another file: it is not
/// refused, and the stale marker is removed, as is a marker at the path of a file this library
/// creates. A process that has the file open already learns of the damage when SQLite reports it
/// to that process.
enum DamagedFiles {
    /// A file, by device and inode.
    struct Identity: Codable, Hashable, Sendable {
        var device: UInt64
        var inode: UInt64
    }

    private struct Marker: Codable {
        var file: Identity
        var message: String
        var seenAt: Date
    }

    /// Damaged files this process saw, with SQLite's message.
    private static let seen = Locked<[Identity: String]>([:])
    /// A descriptor kept open on each damaged file in `seen` that could be opened, never closed:
    /// while it is open the file's inode cannot go to another file.
    private static let held = Locked<[Identity: Int32]>([:])

    static func markerPath(_ path: String) -> String { path + ".damaged" }

    /// The error every write into a damaged file gets: it names the file and the way out.
    static func error(path: String, message: String) -> BackgroundSyncError {
        BackgroundSyncError(
            .storage,
            "'\(path)' is damaged (\(message)); it takes no more writes: copy what can still be read into a new file "
                + "with `bgsync salvage --db \(path) --to NEW_FILE` (SQLiteQueueDatabase.salvage) and use that file")
    }

    /// Notes that the file at `path` is damaged, in this process and (if the folder can be
    /// written) in the marker file, and returns the error to report. `opened` is the file the
    /// instance that met the damage opened, when known: if another file has been moved to `path`
    /// since, the finding is only that instance's (`noteOpened`), and the file at `path` is left
    /// alone. The opened file is not remembered by the process then: it cannot be held (it is no
    /// longer at a path), and once deleted and closed its inode may go to a new file.
    static func record(
        path: String, message: String, file opened: Identity? = nil, noteOpened: (String) -> Void = { _ in }
    ) -> BackgroundSyncError {
        if let opened, opened != identity(path) {
            noteOpened(message)
            return error(path: path, message: message)
        }
        guard path != ":memory:", let file = hold(path) ?? identity(path) else { return error(path: path, message: message) }
        seen.withLock { $0[file] = $0[file] ?? message }
        if let data = try? JSONEncoder().encode(Marker(file: file, message: message, seenAt: Date())) {
            // Best effort: a reader that may not write the folder still refuses in its own process.
            _ = FileManager.default.createFile(atPath: markerPath(path), contents: data, attributes: [.posixPermissions: 0o644])
        }
        return error(path: path, message: message)
    }

    /// Throws if the file an instance opened (`file`, at `path`) was found damaged in this process.
    static func refuseWrites(path: String, file: Identity?) throws {
        guard let file, let message = seen.withLock({ $0[file] }) else { return }
        throw error(path: path, message: message)
    }

    /// At opening for writing: throws if this process or a marker found the file now at `path`
    /// damaged, and removes a marker that names another file.
    static func checkMarker(path: String) throws {
        guard let file = identity(path) else { return }
        try refuseWrites(path: path, file: file)
        let marker = markerPath(path)
        guard let data = FileManager.default.contents(atPath: marker) else { return }
        guard let found = try? JSONDecoder().decode(Marker.self, from: data) else {
            throw error(path: path, message: "its marker file '\(marker)' says so")
        }
        if found.file == file {
            _ = hold(path)
            seen.withLock { $0[file] = found.message }
            throw error(path: path, message: found.message)
        }
        try? FileManager.default.removeItem(atPath: marker)
    }

    /// A new file was created at `path`: a marker left by a damaged file of that name is removed,
    /// and a damaged file this process saw under the new file's inode (one it could not keep
    /// open, deleted since, whose inode went to the new file) is forgotten.
    static func noteCreated(path: String) {
        if let file = identity(path) { _ = seen.withLock { $0.removeValue(forKey: file) } }
        try? FileManager.default.removeItem(atPath: markerPath(path))
    }

    /// Opens the damaged file at `path` for good (once per file) and returns its identity, or nil
    /// if it cannot be opened (then its inode may go to a new file once it is deleted). A
    /// descriptor opened here is never closed, not even a second one on a file already held
    /// (possible only if the path changed files meanwhile) or one `fstat` fails on: closing any
    /// descriptor on a file drops the locks SQLite holds on it in this process.
    private static func hold(_ path: String) -> Identity? {
        held.withLock { held in
            if let file = identity(path), held[file] != nil { return file }
            let descriptor = open(path, O_RDONLY | O_CLOEXEC)
            guard descriptor >= 0 else { return nil }
            var info = stat()
            guard fstat(descriptor, &info) == 0 else { return nil }
            let file = Identity(device: UInt64(truncatingIfNeeded: info.st_dev), inode: UInt64(truncatingIfNeeded: info.st_ino))
            if held[file] == nil { held[file] = descriptor }
            return file
        }
    }

    /// The device and inode of the file at `path`.
    static func identity(_ path: String) -> Identity? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Identity(device: UInt64(truncatingIfNeeded: info.st_dev), inode: UInt64(truncatingIfNeeded: info.st_ino))
    }
}
