import Foundation

/// The number of entries waiting in a queue, now and after each change: for a badge in a UI.
///
/// ```swift
/// struct PendingBadge: View {
///     let queue: Queue
///     @State private var pending = 0
///
///     var body: some View {
///         Text(pending == 0 ? "All sent" : "\(pending) waiting to sync")
///             .task { for await size in queue.sizes() { pending = size } }
///     }
/// }
/// ```
///
/// The first element is the size read when iteration starts; then, at each of the queue's events
/// (``Queue/events()``), the size read again — events of concurrent pushes and replays arrive in
/// any order, so the size they carry is not used — a value only when it differs from the last one.
/// Iteration ends when the task is cancelled or the queue is released; a size that cannot be read
/// ends it too.
public struct QueueSizes: AsyncSequence, Sendable {
    public typealias Element = Int

    let queue: Queue

    public func makeAsyncIterator() -> Iterator {
        // Subscribed before the first size is read, so that no change falls in between.
        Iterator(queue: queue, events: queue.events().makeAsyncIterator())
    }

    /// Reads the current size, then follows the events.
    public struct Iterator: AsyncIteratorProtocol {
        let queue: Queue
        var events: AsyncStream<QueueEvent>.Iterator
        var last: Int?

        public mutating func next() async -> Int? {
            guard let last else {
                guard let size = try? await queue.size() else { return nil }
                self.last = size
                return size
            }
            while await events.next() != nil {
                guard let size = try? await queue.size() else { return nil }
                if size != last {
                    self.last = size
                    return size
                }
            }
            return nil
        }
    }
}

extension Queue {
    /// The number of entries waiting, starting with the current one; see ``QueueSizes``.
    public nonisolated func sizes() -> QueueSizes {
        QueueSizes(queue: self)
    }
}
