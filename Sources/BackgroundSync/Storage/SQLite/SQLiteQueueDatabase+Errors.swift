import Foundation
import GRDB

extension SQLiteQueueDatabase {
    /// The library's error for a SQLite or GRDB error, naming the file and what was being done.
    /// A failure of a connection that reads a snapshot (`snapshot`) is not taken for damage:
    /// without locks, a read may overlap a writer's checkpoint. `modes` are those of the failing
    /// instance, when known: damage is recorded for the file it opened, even if another one has
    /// been moved to `path` since.
    static func mapError(
        _ error: any Error, path: String, action: String, snapshot: Bool = false, modes: SynchronousModes? = nil
    ) -> BackgroundSyncError {
        if let error = error as? BackgroundSyncError { return error }
        if snapshot, let error = error as? DatabaseError, error.resultCode == .SQLITE_CORRUPT {
            return BackgroundSyncError(
                .storage,
                "cannot read '\(path)' (\(error.message ?? "malformed")): it changed while it was read without locks (its "
                    + "owner's process started writing), or it is damaged; try again")
        }
        if isDiskFull(error, path: path) { return diskFullError(path: path, action: action) }
        if let error = error as? DatabaseError {
            switch error.resultCode {
            case .SQLITE_NOTADB:
                return BackgroundSyncError(.notADatabase, "'\(path)' is not a SQLite database")
            case .SQLITE_CORRUPT:
                return DamagedFiles.record(
                    path: path, message: error.message ?? "database disk image is malformed", file: modes?.file,
                    noteOpened: { modes?.noteDamaged($0) })
            case .SQLITE_BUSY, .SQLITE_LOCKED:
                return BackgroundSyncError(.storage, "cannot \(action) '\(path)': the database is locked by another process")
            case .SQLITE_READONLY, .SQLITE_PERM, .SQLITE_CANTOPEN:
                return BackgroundSyncError(
                    .storage, "cannot \(action) '\(path)': \(error.message ?? "permission denied")")
            default:
                return BackgroundSyncError(
                    .storage, "cannot \(action) '\(path)': \(error.message ?? "\(error.resultCode)")")
            }
        }
        return BackgroundSyncError(.storage, "cannot \(action) '\(path)'", underlying: error)
    }
}
