import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A small HTTP/1.1 server bound to 127.0.0.1, for the demo and the tests.
///
/// It speaks real HTTP over real sockets (keep-alive, `Content-Length` and chunked bodies,
/// `Expect: 100-continue`), and its handler can answer, reset the connection, close it without an
/// answer, or hang, so that clients meet the faults of real networks. Each connection is served by
/// its own thread; the handler is called on that thread.
///
/// `@unchecked Sendable`: the mutable state (sockets, open connections, the running flag) is only
/// touched under `lock`.
public final class LoopbackHTTPServer: @unchecked Sendable {
    /// A request as received.
    public struct Request: Sendable {
        /// The method (`POST`).
        public var method: String
        /// The request target: path and query (`/api/posts?x=1`).
        public var target: String
        /// Header fields, names lower-cased, repeated fields joined with ", ".
        public var headers: [String: String]
        /// The body (empty when there is none).
        public var body: Data

        /// The path without the query.
        public var path: String { String(target.split(separator: "?", maxSplits: 1).first ?? "") }
    }

    /// A response to send.
    public struct Response: Sendable {
        /// The status code.
        public var status: Int
        /// Extra header fields (`Content-Length` is added).
        public var headers: [String: String]
        /// The body.
        public var body: Data

        /// Creates a response.
        public init(status: Int = 200, headers: [String: String] = [:], body: Data = Data()) {
            self.status = status
            self.headers = headers
            self.body = body
        }

        /// A response with a UTF-8 text body.
        public static func text(_ text: String, status: Int = 200, headers: [String: String] = [:]) -> Response {
            var headers = headers
            headers["Content-Type"] = headers["Content-Type"] ?? "text/plain; charset=utf-8"
            return Response(status: status, headers: headers, body: Data(text.utf8))
        }
    }

    /// What the server does with a request.
    public enum Action: Sendable {
        /// Send this response (after `delay`, if any) and keep the connection open.
        case respond(Response, delay: Duration? = nil)
        /// Reset the connection (TCP RST) without answering.
        case reset
        /// Close the connection without answering.
        case close
        /// Keep the connection open without answering for `duration` (or until the server stops), then close it.
        case hang(Duration)
        /// Send the head at once, then the body in `chunks` pieces `interval` apart (a slow body).
        case trickle(Response, chunks: Int, interval: Duration)
    }

    /// Decides what to do with each request; called on the connection's thread.
    public typealias Handler = @Sendable (Request) -> Action

    private let handler: Handler
    private let lock = NSLock()
    private var listenSocket: Int32 = -1
    private var connections: Set<Int32> = []
    /// Whether requests are served; when `false` with a listening socket, connections are reset.
    private var running = false
    private var acceptDone: DispatchSemaphore?
    /// Wakes the threads that hang or delay a response when the server stops.
    private let stopCondition = NSCondition()
    private var boundPort: UInt16 = 0

    /// Creates a stopped server.
    public init(handler: @escaping Handler) {
        self.handler = handler
    }

    deinit {
        close()
    }

    /// The port the server listens on (the last one, once stopped).
    public var port: UInt16 {
        lock.withLock { boundPort }
    }

    /// `http://127.0.0.1:<port>`.
    public var baseURL: URL {
        URL(string: "http://127.0.0.1:\(port)")!
    }

    /// Starts listening on 127.0.0.1 at `port` (0: a free port chosen by the system) and returns the
    /// port. Starting a running server does nothing; starting a stopped one on its own port (or
    /// port 0) serves again on the socket it kept.
    @discardableResult
    public func start(port: UInt16 = 0) throws -> UInt16 {
        let kept = lock.withLock { () -> Bool in
            if listenSocket >= 0, !running, port == 0 || port == boundPort {
                running = true
                return true
            }
            return false
        }
        if kept { return self.port }
        if lock.withLock({ listenSocket >= 0 && !running }) { close() }
        return try lock.withLock {
            if running { return boundPort }
            let (fd, bound) = try bindLoopbackSocket(port: port, reuseAddress: true, listening: true)
            boundPort = bound
            listenSocket = fd
            running = true
            let done = DispatchSemaphore(value: 0)
            acceptDone = done
            let thread = Thread { [self] in
                acceptLoop(fd)
                done.signal()
            }
            thread.name = "LoopbackHTTPServer.accept"
            thread.start()
            return boundPort
        }
    }

    /// Stops serving: drops every open connection, wakes the requests a handler holds, and resets
    /// each new connection at once (a client sees "connection reset", no response). The port stays
    /// the server's, so that no other server takes it meanwhile and ``start(port:)`` serves on it
    /// again.
    public func stop() {
        lock.withLock {
            running = false
            for connection in connections {
                shutdown(connection, Int32(SHUT_RDWR))
            }
        }
        stopCondition.lock()
        stopCondition.broadcast()
        stopCondition.unlock()
    }

    /// Stops serving and closes the port; returns once no new connection can be accepted.
    private func close() {
        stop()
        let done: DispatchSemaphore? = lock.withLock {
            guard listenSocket >= 0 else { return nil }
            shutdown(listenSocket, Int32(SHUT_RDWR))
            return acceptDone
        }
        guard let done else { return }
        done.wait()
        lock.withLock {
            _ = closeSocket(listenSocket)
            listenSocket = -1
        }
    }

    private func acceptLoop(_ fd: Int32) {
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let (accepted, listening) = lock.withLock { () -> (Bool, Bool) in
                guard running else { return (false, listenSocket == fd) }
                connections.insert(client)
                return (true, true)
            }
            guard accepted else {
                // Stopped: reset the connection (no answer); closed: end the loop.
                var linger = SocketLinger(l_onoff: 1, l_linger: 0)
                setsockopt(client, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<SocketLinger>.size))
                _ = closeSocket(client)
                if listening { continue }
                return
            }
            #if canImport(Darwin)
            var yes: Int32 = 1
            setsockopt(client, SOL_SOCKET, SO_NOSIGPIPE, &yes, socklen_t(MemoryLayout<Int32>.size))
            #endif
            let thread = Thread { [self] in
                serve(client)
                lock.withLock { _ = connections.remove(client) }
                _ = closeSocket(client)
            }
            thread.name = "LoopbackHTTPServer.connection"
            thread.start()
        }
    }

    // MARK: - One connection

    private func serve(_ fd: Int32) {
        var buffer = Data()
        while true {
            guard let request = readRequest(fd, &buffer) else { return }
            switch handler(request) {
            case .respond(let response, let delay):
                if let delay, wait(delay) { return }
                guard write(fd, Self.encode(response, keepAlive: true)) else { return }
                if request.headers["connection"]?.lowercased() == "close" { return }
            case .reset:
                var linger = SocketLinger(l_onoff: 1, l_linger: 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<SocketLinger>.size))
                return
            case .close:
                return
            case .hang(let duration):
                _ = wait(duration)
                return
            case .trickle(let response, let chunks, let interval):
                let encoded = Self.encode(response, keepAlive: true)
                let headLength = encoded.count - response.body.count
                guard write(fd, encoded.prefix(headLength)) else { return }
                let size = max(1, (response.body.count + max(chunks, 1) - 1) / max(chunks, 1))
                var offset = 0
                while offset < response.body.count {
                    if wait(interval) { return }
                    let end = min(offset + size, response.body.count)
                    guard write(fd, response.body[response.body.startIndex + offset..<response.body.startIndex + end]) else { return }
                    offset = end
                }
                if request.headers["connection"]?.lowercased() == "close" { return }
            }
        }
    }

    /// Waits for `duration`; returns `true` if the server stopped meanwhile (or had stopped).
    private func wait(_ duration: Duration) -> Bool {
        let (seconds, attoseconds) = duration.components
        let deadline = Date().addingTimeInterval(Double(seconds) + Double(attoseconds) / 1e18)
        stopCondition.lock()
        defer { stopCondition.unlock() }
        // `stop()` clears `running` before it broadcasts under `stopCondition`, so no wake-up is lost.
        while lock.withLock({ running }) && Date() < deadline {
            _ = stopCondition.wait(until: deadline)
        }
        return !lock.withLock { running }
    }

    private func readRequest(_ fd: Int32, _ buffer: inout Data) -> Request? {
        let separator = Data("\r\n\r\n".utf8)
        var headEnd: Range<Data.Index>?
        while true {
            headEnd = buffer.range(of: separator)
            if headEnd != nil { break }
            if buffer.count > 1 << 20 { return nil }
            guard read(fd, into: &buffer) else { return nil }
        }
        guard let headEnd else { return nil }
        let head = String(decoding: buffer[buffer.startIndex..<headEnd.lowerBound], as: UTF8.self)
        buffer.removeSubrange(buffer.startIndex..<headEnd.upperBound)
        var lines = head.components(separatedBy: "\r\n")
        let requestLine = lines.removeFirst().split(separator: " ")
        guard requestLine.count == 3 else { return nil }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers[name] = headers[name].map { $0 + ", " + value } ?? value
        }
        if headers["expect"]?.lowercased() == "100-continue" {
            guard write(fd, Data("HTTP/1.1 100 Continue\r\n\r\n".utf8)) else { return nil }
        }
        var body = Data()
        if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            guard let chunked = readChunked(fd, &buffer) else { return nil }
            body = chunked
        } else if let length = headers["content-length"].flatMap({ Int($0) }), length > 0 {
            while buffer.count < length {
                guard read(fd, into: &buffer) else { return nil }
            }
            body = Data(buffer.prefix(length))
            buffer.removeFirst(length)
        }
        return Request(method: String(requestLine[0]), target: String(requestLine[1]), headers: headers, body: body)
    }

    private func readChunked(_ fd: Int32, _ buffer: inout Data) -> Data? {
        var body = Data()
        let crlf = Data("\r\n".utf8)
        while true {
            var lineEnd = buffer.range(of: crlf)
            while lineEnd == nil {
                guard read(fd, into: &buffer) else { return nil }
                lineEnd = buffer.range(of: crlf)
            }
            let sizeText = String(decoding: buffer[buffer.startIndex..<lineEnd!.lowerBound], as: UTF8.self)
            buffer.removeSubrange(buffer.startIndex..<lineEnd!.upperBound)
            guard let size = Int(sizeText.split(separator: ";").first ?? "", radix: 16) else { return nil }
            while buffer.count < size + 2 {
                guard read(fd, into: &buffer) else { return nil }
            }
            if size == 0 {
                buffer.removeFirst(2)
                return body
            }
            body.append(buffer.prefix(size))
            buffer.removeFirst(size + 2)
        }
    }

    private func read(_ fd: Int32, into buffer: inout Data) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count > 0 {
                buffer.append(chunk, count: count)
                return true
            }
            if count < 0 && errno == EINTR { continue }
            return false
        }
    }

    private func write(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                let sent = send(fd, raw.baseAddress! + offset, raw.count - offset, Self.sendFlags)
                if sent < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += sent
            }
            return true
        }
    }

    private static func encode(_ response: Response, keepAlive: Bool) -> Data {
        var head = "HTTP/1.1 \(response.status) \(reason(response.status))\r\n"
        for (name, value) in response.headers.sorted(by: { $0.key < $1.key })
        where name.lowercased() != "content-length" {
            head += "\(name): \(value)\r\n"
        }
        head += "Content-Length: \(response.body.count)\r\n"
        head += keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n"
        return Data(head.utf8) + response.body
    }

    private static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 201: "Created"
        case 204: "No Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 422: "Unprocessable Content"
        case 429: "Too Many Requests"
        case 500: "Internal Server Error"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        default: "Status"
        }
    }

    static func posixError(_ what: String) -> POSIXError {
        POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO, userInfo: [NSLocalizedDescriptionKey: what])
    }

    #if canImport(Darwin)
    static let streamType = SOCK_STREAM
    private static let sendFlags: Int32 = 0
    #else
    static let streamType = Int32(SOCK_STREAM.rawValue)
    private static let sendFlags = Int32(MSG_NOSIGNAL)
    #endif
}

#if canImport(Darwin)
func closeSocket(_ fd: Int32) -> Int32 { Darwin.close(fd) }
typealias SocketLinger = Darwin.linger
#else
func closeSocket(_ fd: Int32) -> Int32 { Glibc.close(fd) }
typealias SocketLinger = Glibc.linger
#endif
