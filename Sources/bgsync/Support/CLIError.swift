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
/// nothing changed), 3 `send --fail-on-queue` queued the request.
enum ExitStatus {
    static let retryableFailure = ExitCode(1)
    static let badInput = ExitCode(2)
    static let queued = ExitCode(3)
}

/// Prints `bgsync: <message>` on stderr.
func printError(_ message: String) {
    FileHandle.standardError.write(Data("bgsync: \(message)\n".utf8))
}

/// Runs a command body; bad input and storage errors become one line on stderr and exit code 2,
/// never a stack trace.
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
        throw ExitStatus.badInput
    } catch {
        printError("\(error)")
        throw ExitStatus.badInput
    }
}
