import ArgumentParser
import BackgroundSync
import Foundation

/// A problem with the command's input, reported as one line.
struct CLIError: Error, CustomStringConvertible {
    var description: String

    init(_ description: String) {
        self.description = description
    }
}

/// Exit codes: 0 done, 1 a retryable failure stopped the work, 2 bad input (one line on stderr,
/// nothing changed; a path to a file that is not a database is bad input too), 3 `send --fail-on-queue`
/// queued the request, 4 the database cannot be used (locked by another process, disk full, I/O
/// error, corrupt, written by a newer version),
/// 5 `send`: the server refused the request and retrying would not help (not queued).
enum ExitStatus {
    static let retryableFailure = ExitCode(1)
    static let badInput = ExitCode(2)
    static let queued = ExitCode(3)
    static let storageFailure = ExitCode(4)
    static let refused = ExitCode(5)

    /// The status for an error a command did not handle itself.
    static func forError(_ error: BackgroundSyncError) -> ExitCode {
        switch error.code {
        case .storage, .schemaTooNew: storageFailure
        case .queueReplayFailed, .queuePaused: retryableFailure
        default: badInput
        }
    }
}

/// Prints `bgsync: <message>` on stderr.
func printError(_ message: String) {
    FileHandle.standardError.write(Data("bgsync: \(message)\n".utf8))
}

/// Runs a command body; errors become one line on stderr and their exit status (see
/// ``ExitStatus``), never a stack trace.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let exit as ExitCode {
        throw exit
    } catch let error as CLIError {
        printError(error.description)
        throw ExitStatus.badInput
    } catch let error as BackgroundSyncError {
        printError(error.description)
        throw ExitStatus.forError(error)
    } catch {
        // Not the input's fault: the file system or the environment.
        printError("\(error)")
        throw ExitStatus.storageFailure
    }
}
