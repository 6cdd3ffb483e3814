import Foundation
import GRDB

extension SQLiteQueueDatabase {
    /// The library's error for a SQLite or GRDB error, naming the file and what was being done.
    static func mapError(_ error: any Error, path: String, action: String) -> BackgroundSyncError {
        if let error = error as? BackgroundSyncError { return error }
        if isDiskFull(error, path: path) { return diskFullError(path: path, action: action) }
        if let error = error as? DatabaseError {
            switch error.resultCode {
            case .SQLITE_NOTADB:
                return BackgroundSyncError(.notADatabase, "'\(path)' is not a SQLite database")
            case .SQLITE_CORRUPT:
                return DamagedFiles.record(path: path, message: error.message ?? "database disk image is malformed")
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
