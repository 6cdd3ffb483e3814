import Foundation

/// Claims that can build the requests of the entries they lease ahead, away from the sends: the
/// replay then takes each entry's request ready instead of rebuilding and checking it from
/// ``QueueStoreEntry/requestData`` between two sends. A replay finds it by a cast of the
/// ``ReplayClaims`` its store made; a store of this package's other modules may adopt it.
package protocol PreparingReplayClaims: ReplayClaims {
    /// From now on, the requests of the entries leased are built (with
    /// ``StorableRequest/init(requestData:)``); called before the first ``ReplayClaims/next()``, by
    /// a replay that sends stored requests as they are (no plugins, no `requestWillReplay` hook).
    func prepareRequests()

    /// Takes the request built for an entry handed out, if there is one; `nil` when none was
    /// built (preparation was not asked for, the entry has sealed secret fields, or its request
    /// could not be built), when it was taken already, and after ``ReplayClaims/finish()``. The
    /// replay then builds it.
    func preparedRequest(for entry: QueueStoreEntry) -> StorableRequest?
}
