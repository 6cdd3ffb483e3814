import Foundation

/// A value guarded by a lock, for the few places where state must be read and changed from
/// synchronous code (a `deinit`, an initializer) and an actor cannot be awaited. Visible to the
/// package's other modules (`package`), not to apps.
///
/// `@unchecked Sendable` is safe because every access to `value` goes through `withLock`, which
/// holds `lock` for the whole closure.
package final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    package init(_ value: Value) {
        self.value = value
    }

    package func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
