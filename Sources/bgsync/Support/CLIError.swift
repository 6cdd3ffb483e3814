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
/// 5 `send`: the server refused the request and retrying would not help (not queued), 6 the
/// PostgreSQL server cannot be reached, refused the connection (wrong password, no such database)
/// or dropped it (a write under way may then have committed).
enum ExitStatus {
    static let retryableFailure = ExitCode(1)
    static let badInput = ExitCode(2)
    static let queued = ExitCode(3)
    static let storageFailure = ExitCode(4)
    static let refused = ExitCode(5)
    static let storeUnreachable = ExitCode(6)

    /// The status for an error a command did not handle itself.
    static func forError(_ error: BackgroundSyncError) -> ExitCode {
        switch error.code {
        case .storage, .schemaTooNew: storageFailure
        case .queueReplayFailed, .queuePaused: retryableFailure
        case .storeUnreachable: storeUnreachable
        default: badInput
        }
    }
}

/// Prints `bgsync: <message>` on stderr, on one line: control characters in the message (a CR or
/// LF echoed from the input) are written as escapes.
func printError(_ message: String) {
    FileHandle.standardError.write(Data("bgsync: \(escapingControlCharacters(message))\n".utf8))
}

/// `text` with its control characters written as `\r`, `\n`, `\t` or `\u{…}`.
func escapingControlCharacters(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: isControl) else { return text }
    var escaped = ""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\r": escaped += "\\r"
        case "\n": escaped += "\\n"
        case "\t": escaped += "\\t"
        case _ where isControl(scalar): escaped += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
        default: escaped.unicodeScalars.append(scalar)
        }
    }
    return escaped
}

private func isControl(_ scalar: Unicode.Scalar) -> Bool {
    scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
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
