import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A program started with `posix_spawn` and reaped with `waitpid`, for the tests and
/// `PostgresTestServer`, on Linux.
///
/// The tests use it rather than Foundation's `Process`, which on Linux lists `/proc/self/fd`
/// before every launch in a way that can crash a process holding many descriptors, as the test
/// process does. The child gets standard input, output and error as asked and none of this
/// process's other descriptors (`closefrom(3)` in the child), so a long-lived child (a server, a
/// worker) never holds a pipe or socket a test waits to see closed. Signals start with their
/// default actions and none blocked, whatever thread spawns it.
///
/// Sendable: everything is a constant but `waitStatus`, which is read and written under `lock`.
public final class ChildProcess: @unchecked Sendable {
    /// Where one of the child's standard streams goes.
    public enum Stream: Sendable {
        /// `/dev/null`.
        case nullDevice
        /// This process's own.
        case inherited
        /// A copy of this descriptor; the caller keeps (and closes) its own.
        case handle(FileHandle)
        /// The child's end of a pipe (the writing end for output, the reading end for input);
        /// this process's copy of that end is closed once the child has started, so the other
        /// end sees the end of the file when the child exits.
        case pipe(Pipe)
        /// The same as the child's standard output (for standard error only).
        case standardOutput
    }

    /// How the program ended.
    public enum TerminationReason: Sendable, Equatable {
        /// It exited (``ChildProcess/terminationStatus`` is its exit status).
        case exit
        /// A signal ended it (``ChildProcess/terminationStatus`` is the signal's number).
        case uncaughtSignal
    }

    /// A failure to start the program, naming it.
    public struct Failure: Error, CustomStringConvertible {
        /// What could not be done, and why.
        public let description: String
    }

    /// The child's process id.
    public let processIdentifier: pid_t
    private let lock = NSLock()
    /// The status `waitpid` gave once the program was reaped; reaped only under `lock`, so a
    /// signal sent under it never reaches a reused process id.
    private var waitStatus: Int32?

    /// Starts `executable` with `arguments` (`argv[1...]`) and `environment` (this process's when
    /// `nil`).
    public init(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        standardInput: Stream = .nullDevice, standardOutput: Stream = .nullDevice,
        standardError: Stream = .nullDevice
    ) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        try Self.add(standardInput, as: 0, reading: true, to: &actions)
        try Self.add(standardOutput, as: 1, reading: false, to: &actions)
        if case .standardOutput = standardError {
            try Self.check(posix_spawn_file_actions_adddup2(&actions, 1, 2), "give standard error")
        } else {
            try Self.add(standardError, as: 2, reading: false, to: &actions)
        }
        try Self.closeFrom3(&actions)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer { envp?.forEach { free($0) } }
        var pid = pid_t()
        let spawned = envp.map { posix_spawn(&pid, executable, &actions, &attributes, argv, $0) }
            ?? posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard spawned == 0 else {
            throw Failure(description: "cannot run \(executable): \(String(cString: strerror(spawned)))")
        }
        processIdentifier = pid
        for (stream, reading) in [(standardInput, true), (standardOutput, false), (standardError, false)] {
            if case .pipe(let pipe) = stream {
                try? (reading ? pipe.fileHandleForReading : pipe.fileHandleForWriting).close()
            }
        }
    }

    /// Starts the program at `executable`.
    public convenience init(
        _ executable: URL, _ arguments: [String], environment: [String: String]? = nil,
        standardInput: Stream = .nullDevice, standardOutput: Stream = .nullDevice,
        standardError: Stream = .nullDevice
    ) throws {
        try self.init(
            executable.path, arguments, environment: environment, standardInput: standardInput,
            standardOutput: standardOutput, standardError: standardError)
    }

    private static func add(
        _ stream: Stream, as descriptor: Int32, reading: Bool, to actions: inout posix_spawn_file_actions_t
    ) throws {
        let what = "give descriptor \(descriptor)"
        switch stream {
        case .inherited:
            break
        case .nullDevice:
            try check(posix_spawn_file_actions_addopen(&actions, descriptor, "/dev/null", reading ? O_RDONLY : O_WRONLY, 0), what)
        case .standardOutput:
            throw Failure(description: "cannot \(what): .standardOutput is for standard error only")
        case .handle(let handle):
            try check(posix_spawn_file_actions_adddup2(&actions, handle.fileDescriptor, descriptor), what)
        case .pipe(let pipe):
            let end = reading ? pipe.fileHandleForReading : pipe.fileHandleForWriting
            try check(posix_spawn_file_actions_adddup2(&actions, end.fileDescriptor, descriptor), what)
        }
    }

    private static func check(_ result: Int32, _ what: String) throws {
        guard result == 0 else { throw Failure(description: "cannot \(what): \(String(cString: strerror(result)))") }
    }

    /// Adds to `actions` the closing of every descriptor from 3 (glibc's
    /// `posix_spawn_file_actions_addclosefrom_np`, which Swift's Glibc module does not show); where
    /// it is missing, of the descriptors open now.
    private static func closeFrom3(_ actions: inout posix_spawn_file_actions_t) throws {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
            try check(unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3), "close the other descriptors")
            return
        }
        let open = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap(Int32.init)
        for descriptor in open where descriptor > 2 && fcntl(descriptor, F_GETFD) >= 0 {
            try check(posix_spawn_file_actions_addclose(&actions, descriptor), "close descriptor \(descriptor)")
        }
    }

    /// Whether the program still runs.
    public var isRunning: Bool {
        lock.withLock { reapIfEnded() }
    }

    /// Blocks until the program ends.
    public func waitUntilExit() {
        while lock.withLock({ reapIfEnded() }) {
            // Waits for the end without reaping (`WNOWAIT`): the reaping is `reapIfEnded`'s.
            var info = siginfo_t()
            if waitid(P_PID, id_t(processIdentifier), &info, WEXITED | WNOWAIT) < 0 && errno != EINTR {
                // Reaped by something else than this object: its status is lost.
                lock.withLock { if waitStatus == nil { waitStatus = Self.unknownStatus } }
                return
            }
        }
    }

    /// Exit status 255, for a program something else reaped.
    private static let unknownStatus: Int32 = 0xFF << 8

    /// Reaps the program if it has ended; returns whether it still runs. Called under `lock`.
    private func reapIfEnded() -> Bool {
        if waitStatus != nil { return false }
        var status: Int32 = 0
        switch waitpid(processIdentifier, &status, WNOHANG) {
        case 0:
            return true
        case processIdentifier:
            waitStatus = status
            return false
        default:
            if errno == EINTR { return true }
            waitStatus = Self.unknownStatus
            return false
        }
    }

    /// Sends `signal` to the program if it has not been reaped yet.
    public func send(_ signal: Int32) {
        lock.withLock {
            if waitStatus == nil { _ = kill(processIdentifier, signal) }
        }
    }

    /// Sends SIGTERM.
    public func terminate() {
        send(SIGTERM)
    }

    /// The exit status, or the number of the signal that ended the program; waits for its end
    /// (check ``isRunning`` first where the program may never end).
    public var terminationStatus: Int32 {
        let status = endStatus()
        return status & 0x7F == 0 ? (status >> 8) & 0xFF : status & 0x7F
    }

    /// Whether the program exited or a signal ended it; waits for its end.
    public var terminationReason: TerminationReason {
        endStatus() & 0x7F == 0 ? .exit : .uncaughtSignal
    }

    private func endStatus() -> Int32 {
        waitUntilExit()
        return lock.withLock { waitStatus ?? 0 }
    }
}

extension ChildProcess {
    /// What a program run to its end printed, and how it ended.
    public struct Run: Sendable {
        /// The exit status, or the number of the signal that ended it.
        public var status: Int32
        /// Whether it exited or a signal ended it.
        public var reason: TerminationReason
        /// Its standard output.
        public var stdout: Data
        /// Its standard error.
        public var stderr: Data
    }

    /// Runs a program to its end (standard input is `/dev/null`) and returns its output, read
    /// while it runs so that neither pipe fills up. Blocks the calling thread.
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil
    ) throws -> Run {
        let (out, err) = (Pipe(), Pipe())
        let child = try ChildProcess(
            executable, arguments, environment: environment, standardOutput: .pipe(out), standardError: .pipe(err))
        let errors = ThreadResult<Data>()
        Thread { errors.set(err.fileHandleForReading.readDataToEndOfFile()) }.start()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        child.waitUntilExit()
        return Run(status: child.terminationStatus, reason: child.terminationReason, stdout: output, stderr: errors.get())
    }
}

/// A value one thread sets and another waits for. Sendable: `value` is read and written under
/// `condition`.
private final class ThreadResult<Value: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    private var value: Value?

    func set(_ newValue: Value) {
        condition.lock()
        value = newValue
        condition.broadcast()
        condition.unlock()
    }

    func get() -> Value {
        condition.lock()
        defer { condition.unlock() }
        while value == nil { condition.wait() }
        return value!
    }
}
