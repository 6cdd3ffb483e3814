import BackgroundSync
import Foundation

/// The store conformance suite: every clause of the ``QueueDatabase`` and ``ReplayClaims``
/// contract as a check a driver runs against itself. A driver passes when every check passes on a
/// fresh store.
///
/// Run each check as a test of its own (Swift Testing):
///
/// ```swift
/// import BackgroundSyncTesting
/// import Testing
///
/// @Suite struct MyStoreConformance {
///     static let conformance = StoreConformance {
///         let store = try await MyStore.makeEmpty()
///         return StoreConformance.Store(open: { try await MyQueueDatabase(store) })
///     }
///
///     @Test(arguments: StoreConformance.checks)
///     func clause(_ check: StoreConformance.Check) async throws {
///         try await Self.conformance.run(check)
///     }
/// }
/// ```
///
/// A failed check throws a ``ConformanceFailure`` that names the clause and what was seen.
public struct StoreConformance: Sendable {
    /// One store under test. ``open`` makes a new database instance on it each time it is called:
    /// two instances stand for two processes sharing the store, and a new instance after the others
    /// are released stands for a restart.
    public struct Store: Sendable {
        /// Opens a new instance of the database on the store.
        public var open: @Sendable () async throws -> any QueueDatabase
        /// Removes the store once a check is done (temporary files, a scratch schema); optional.
        public var remove: (@Sendable () async throws -> Void)?

        /// Creates a store under test.
        public init(
            open: @escaping @Sendable () async throws -> any QueueDatabase,
            remove: (@Sendable () async throws -> Void)? = nil
        ) {
            self.open = open
            self.remove = remove
        }
    }

    /// One clause of the contract.
    public struct Check: Sendable, CustomStringConvertible {
        /// What the clause says.
        public let name: String
        let body: @Sendable (Store) async throws -> Void

        public var description: String { name }
    }

    /// Makes a new, empty store for each check.
    public let makeStore: @Sendable () async throws -> Store

    /// Creates the suite for a driver; `makeStore` makes a new, empty store each time it is called.
    public init(makeStore: @escaping @Sendable () async throws -> Store) {
        self.makeStore = makeStore
    }

    /// Every check, in the order of the contract's documentation.
    public static var checks: [Check] { entryChecks + recordChecks + replayChecks }

    /// Runs one check on a new store, then removes the store.
    public func run(_ check: Check) async throws {
        let store = try await makeStore()
        let outcome = await Result(catching: { try await check.body(store) })
        try await store.remove?()
        do {
            try outcome.get()
        } catch let failure as ConformanceFailure {
            throw failure
        } catch {
            throw ConformanceFailure(check: check.name, message: "threw \(error)")
        }
    }

    /// Runs every check; throws the first failure after running them all (see ``ConformanceFailure/others``).
    public func runAll() async throws {
        var failures: [ConformanceFailure] = []
        for check in Self.checks {
            do {
                try await run(check)
            } catch let failure as ConformanceFailure {
                failures.append(failure)
            }
        }
        if var first = failures.first {
            first.others = Array(failures.dropFirst())
            throw first
        }
    }
}

/// A clause of the store contract that a driver does not keep.
public struct ConformanceFailure: Error, CustomStringConvertible {
    /// The clause.
    public var check: String
    /// What was expected and what was seen.
    public var message: String
    /// Other clauses that failed in the same ``StoreConformance/runAll()``.
    public var others: [ConformanceFailure] = []

    /// Creates a failure.
    public init(check: String, message: String) {
        self.check = check
        self.message = message
    }

    public var description: String {
        ([self] + others).map { "store conformance: \($0.check): \($0.message)" }.joined(separator: "\n")
    }
}

/// The helpers checks are written with.
extension StoreConformance {
    static func check(_ name: String, _ body: @escaping @Sendable (Store) async throws -> Void) -> Check {
        Check(name: name) { store in
            do {
                try await body(store)
            } catch let failure as Expectation {
                throw ConformanceFailure(check: name, message: failure.message)
            }
        }
    }

    /// An expectation that did not hold.
    struct Expectation: Error {
        var message: String
    }

    static func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        if !condition { throw Expectation(message: message()) }
    }

    static func expectEqual<T: Equatable>(_ seen: T, _ expected: T, _ what: String) throws {
        if seen != expected { throw Expectation(message: "\(what): expected \(expected), got \(seen)") }
    }

    /// A stored request to `https://conformance.example/<path>`.
    static func entry(_ path: String, at timestamp: Date = Date(timeIntervalSince1970: 1_800_000_000)) -> UnidentifiedQueueStoreEntry {
        UnidentifiedQueueStoreEntry(
            requestData: StorableRequest.RequestData(
                url: "https://conformance.example/\(path)", method: "POST", headers: ["content-type": "text/plain"],
                body: Data(path.utf8)),
            timestamp: timestamp)
    }

    /// Pushes entries for `paths` at the tail of `queue`; returns their ids.
    @discardableResult
    static func push(_ paths: [String], to queue: String, _ database: any QueueDatabase) async throws -> [Int64] {
        var ids: [Int64] = []
        for path in paths {
            ids.append(try await database.pushEntry(entry(path), queueName: queue, at: .tail, registeringSyncTag: nil).id)
        }
        return ids
    }

    /// The paths of a queue's entries in a state, in order.
    static func paths(_ queue: String, _ database: any QueueDatabase, state: EntryState = .pending) async throws -> [String] {
        try await database.entries(queueName: queue, state: state).map(path)
    }

    static func path(_ entry: QueueStoreEntry) -> String {
        String(entry.requestData.url.dropFirst("https://conformance.example/".count))
    }

    /// The entry `next()` hands out; fails the check if it hands out none.
    static func claimed(_ claims: any ReplayClaims, _ what: String) async throws -> QueueStoreEntry {
        let result = try await claims.next()
        guard case .claimed(let entry) = result else { throw Expectation(message: "\(what): expected an entry, got \(result)") }
        return entry
    }

    /// Every entry the claims hand out until they are empty (resolving none).
    static func drain(_ claims: any ReplayClaims) async throws -> [QueueStoreEntry] {
        var entries: [QueueStoreEntry] = []
        while case .claimed(let entry) = try await claims.next() {
            entries.append(entry)
        }
        return entries
    }
}
