/// A request to run the sync of one tag (the browser's `SyncEvent`).
public struct SyncEvent: Sendable, Hashable {
    /// The tag the sync was registered with (`background-sync:<queue name>` for a queue).
    public var tag: String
    /// True on the last attempt the dispatcher will make for this registration: if it fails, the
    /// registration is dropped.
    public var lastChance: Bool

    /// Creates an event.
    public init(tag: String, lastChance: Bool = false) {
        self.tag = tag
        self.lastChance = lastChance
    }
}
