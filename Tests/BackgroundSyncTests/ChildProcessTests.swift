import ChildProcesses
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The tests' way of starting programs, on real programs.
@Suite("Child processes", .timeLimit(.minutes(1)))
struct ChildProcessTests {
    @Test func aRunReturnsItsStatusAndBothOutputs() async throws {
        let run = try await offCooperativePool {
            try ChildProcess.run("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"], environment: ["A": "1"])
        }
        #expect(run.status == 3)
        #expect(run.reason == .exit)
        #expect(String(decoding: run.stdout, as: UTF8.self) == "out\n")
        #expect(String(decoding: run.stderr, as: UTF8.self) == "err\n")
    }

    @Test func theEnvironmentIsTheOneGiven() async throws {
        let run = try await offCooperativePool { try ChildProcess.run("/usr/bin/env", [], environment: ["ONLY": "this"]) }
        #expect(String(decoding: run.stdout, as: UTF8.self) == "ONLY=this\n")
    }

    /// A descriptor of this process's that is not one of the child's three streams is closed in
    /// the child, even one that is not closed on exec.
    @Test func theChildGetsNoOtherDescriptor() async throws {
        let pipe = Pipe()
        defer {
            try? pipe.fileHandleForReading.close()
            try? pipe.fileHandleForWriting.close()
        }
        let descriptor = pipe.fileHandleForWriting.fileDescriptor
        #expect(fcntl(descriptor, F_GETFD) & FD_CLOEXEC == 0)
        let run = try await offCooperativePool {
            try ChildProcess.run("/bin/sh", ["-c", "if [ -e /proc/self/fd/\(descriptor) ]; then echo open; else echo closed; fi"])
        }
        #expect(String(decoding: run.stdout, as: UTF8.self) == "closed\n")
    }

    /// SIGTERM ends a child started by a thread that blocks SIGTERM (as dispatch's threads block
    /// signals): the child starts with no signal blocked.
    @Test func aChildStartedWhereSignalsAreBlockedCanBeTerminated() async throws {
        let child = try await offCooperativePool { () -> ChildProcess in
            var blocked = sigset_t()
            sigemptyset(&blocked)
            sigaddset(&blocked, SIGTERM)
            pthread_sigmask(SIG_BLOCK, &blocked, nil)
            return try ChildProcess("/bin/sleep", ["60"])
        }
        #expect(child.isRunning)
        child.terminate()
        #expect(try await exited(child, within: 20))
        #expect(child.terminationReason == .uncaughtSignal)
        #expect(child.terminationStatus == SIGTERM)
    }

    @Test func aPipeGivenToTheChildReachesItsEndWhenTheChildExits() async throws {
        let output = Pipe()
        let child = try ChildProcess("/bin/echo", ["hello"], standardOutput: .pipe(output))
        let text = try await offCooperativePool { output.fileHandleForReading.readDataToEndOfFile() }
        #expect(String(decoding: text, as: UTF8.self) == "hello\n")
        #expect(child.terminationStatus == 0)
        #expect(!child.isRunning)
    }

    @Test func standardErrorCanGoWhereStandardOutputGoes() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bgsync-child-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(FileManager.default.createFile(atPath: path, contents: nil))
        let file = try #require(FileHandle(forWritingAtPath: path))
        let child = try ChildProcess(
            "/bin/sh", ["-c", "echo out; echo err >&2; echo out again"], standardOutput: .handle(file),
            standardError: .standardOutput)
        try file.close()
        #expect(try await exited(child, within: 20))
        #expect(String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self) == "out\nerr\nout again\n")
    }

    @Test func standardInputCanComeFromAPipe() async throws {
        let (input, output) = (Pipe(), Pipe())
        let child = try ChildProcess("/bin/cat", [], standardInput: .pipe(input), standardOutput: .pipe(output))
        input.fileHandleForWriting.write(Data("through cat\n".utf8))
        try input.fileHandleForWriting.close()
        let text = try await offCooperativePool { output.fileHandleForReading.readDataToEndOfFile() }
        #expect(String(decoding: text, as: UTF8.self) == "through cat\n")
        #expect(try await exited(child, within: 20))
    }

    @Test func withoutAnEnvironmentTheChildHasThisProcesss() async throws {
        let path = try #require(ProcessInfo.processInfo.environment["PATH"])
        let run = try await offCooperativePool { try ChildProcess.run("/usr/bin/env", []) }
        #expect(String(decoding: run.stdout, as: UTF8.self).split(separator: "\n").contains("PATH=\(path)"[...]))
    }

    /// A signal this process ignores is not ignored by the child (`SigIgn` of its `/proc/self/status`,
    /// one bit per signal). SIGUSR2, which nothing else here uses, is ignored for the test.
    @Test func theChildStartsWithNoSignalIgnored() async throws {
        let previous = signal(SIGUSR2, SIG_IGN)
        defer { signal(SIGUSR2, previous) }
        let run = try await offCooperativePool { try ChildProcess.run("/bin/grep", ["SigIgn", "/proc/self/status"]) }
        let text = String(decoding: run.stdout, as: UTF8.self)
        let mask = try #require(UInt64(text.dropFirst("SigIgn:\t".count).prefix(16), radix: 16), "\(text)")
        #expect(mask & (1 << UInt64(SIGUSR2 - 1)) == 0, "\(text)")
    }

    @Test func standardOutputIsOnlyForStandardError() {
        #expect {
            try ChildProcess("/bin/true", [], standardOutput: .standardOutput)
        } throws: { error in
            "\(error)" == "cannot give descriptor 1: .standardOutput is for standard error only"
        }
    }

    @Test func aMissingProgramIsAnErrorNamingIt() {
        #expect {
            try ChildProcess("/nonexistent/program", [])
        } throws: { error in
            "\(error)" == "cannot run /nonexistent/program: No such file or directory"
        }
    }
}
