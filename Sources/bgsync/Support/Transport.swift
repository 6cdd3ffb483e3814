import BackgroundSync
#if canImport(FoundationNetworking)
import BackgroundSyncAsyncHTTPClient
#endif

/// The transport `bgsync` sends through: AsyncHTTPClient on Linux (a fleet's daemons live there:
/// it costs less CPU per request than FoundationNetworking's, and a cancelled send is stopped),
/// URLSession on Apple platforms.
func commandTransport() -> any HTTPTransport {
    #if canImport(FoundationNetworking)
    AsyncHTTPClientTransport()
    #else
    URLSessionTransport()
    #endif
}
