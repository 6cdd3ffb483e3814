/// Entries leased ahead of a replay, in queue order, handed out from the front without moving
/// the ones behind: the handed-out entries are let go once they are as many as the entries left
/// (each move is paid for by as many hand-outs), so they never outnumber those.
struct LeasedAhead {
    private var storage: [QueueStoreEntry] = []
    private var head = 0

    init(_ entries: some Sequence<QueueStoreEntry> = []) {
        storage = Array(entries)
    }

    /// The entries not handed out yet, first first.
    var entries: ArraySlice<QueueStoreEntry> { storage[head...] }
    var isEmpty: Bool { head == storage.count }
    var count: Int { storage.count - head }
    /// The first entry's id (without a copy of the entry).
    var firstID: Int64? { isEmpty ? nil : storage[head].id }

    /// Takes the first entry out.
    mutating func popFirst() -> QueueStoreEntry? {
        guard !isEmpty else { return nil }
        let entry = storage[head]
        head += 1
        if isEmpty {
            storage.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= count {
            storage.removeFirst(head)
            head = 0
        }
        return entry
    }

    mutating func append(contentsOf entries: [QueueStoreEntry]) {
        storage.append(contentsOf: entries)
    }

    /// Takes every entry out, first first.
    mutating func removeAll() -> [QueueStoreEntry] {
        defer { self = LeasedAhead() }
        return Array(entries)
    }
}
