import AsyncHTTPClient
import ChildProcesses
import Foundation
import Logging
import NIOCore
import WSClient

/// Debian's `chromium`, headless, driven through the DevTools protocol (a WebSocket): a real
/// browser that loads a page, runs its script, clicks its buttons and follows its forms.
final class HeadlessChromium: Sendable {
    /// Why no browser can run here, or `nil`.
    static let unavailableReason: String? = executable == nil
        ? "chromium is not installed (apt-get install chromium; .ci/run installs it)" : nil

    static let executable: String? = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    let process: ChildProcess
    let profile: URL
    /// `http://127.0.0.1:PORT` of the DevTools endpoint.
    let endpoint: String

    /// Starts the browser on `about:blank` with a profile of its own, and waits for its endpoint.
    init() async throws {
        guard let executable = Self.executable else { throw POSIXError(.ENOENT) }
        profile = FileManager.default.temporaryDirectory.appendingPathComponent("chromium-\(UUID().uuidString)")
        let errors = Pipe()
        let process = try ChildProcess(executable, [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--remote-allow-origins=*", "--user-data-dir=\(profile.path)",
            "--window-size=1280,900", "about:blank",
        ], standardError: .pipe(errors))
        self.process = process
        // The endpoint's line, or the end of the output (the browser exited), or 60 seconds.
        let found = await withTaskGroup(of: String?.self) { group in
            group.addTask {
                for await line in lines(of: errors) {
                    if let range = line.range(of: "DevTools listening on ws://") {
                        return "http://" + line[range.upperBound...].prefix { $0 != "/" }
                    }
                }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(60))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        guard let found else {
            process.terminate()
            throw BrowserError("chromium gave no DevTools endpoint within 60 seconds")
        }
        endpoint = found
    }

    /// Stops the browser (SIGKILL if it has not ended 10 seconds after SIGTERM) and removes its profile.
    func stop() async {
        if process.isRunning { process.terminate() }
        if (try? await exited(process, within: 10)) != true { process.send(SIGKILL) }
        _ = try? await exited(process, within: 10)
        try? FileManager.default.removeItem(at: profile)
    }

    /// Runs `body` with the browser's first tab.
    func withPage(_ body: @escaping @Sendable (BrowserPage) async throws -> Void) async throws {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: endpoint + "/json/list"), timeout: .seconds(30))
        let list = try JSONSerialization.jsonObject(with: Data(buffer: try await response.body.collect(upTo: 1 << 20))) as? [[String: Any]]
        guard let target = list?.first(where: { $0["type"] as? String == "page" }),
            let socket = (target["webSocketDebuggerUrl"] as? String)?.replacingOccurrences(of: "ws://localhost:", with: "ws://127.0.0.1:")
        else { throw BrowserError("chromium lists no page") }
        var logger = Logger(label: "test.chromium")
        logger.logLevel = .critical
        let failed = Box<(any Error)?>(nil)
        try await WebSocketClient.connect(
            url: socket, configuration: .init(maxFrameSize: 64 << 20), logger: logger
        ) { inbound, outbound, _ in
            let page = BrowserPage(messages: inbound.messages(maxSize: 64 << 20).makeAsyncIterator(), outbound: outbound)
            do {
                try await body(page)
            } catch {
                failed.withLock { $0 = error }
            }
            try await outbound.close(.normalClosure, reason: nil)
        }
        if let failure = failed.withLock({ $0 }) { throw failure }
    }
}

struct BrowserError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// One tab, driven by DevTools commands sent one at a time.
final class BrowserPage: @unchecked Sendable {
    // Used by one task at a time: the test's, inside `withPage`.
    private var messages: WebSocketInboundMessageStream.AsyncIterator
    private let outbound: WebSocketOutboundWriter
    private var nextID = 0

    init(messages: WebSocketInboundMessageStream.AsyncIterator, outbound: WebSocketOutboundWriter) {
        self.messages = messages
        self.outbound = outbound
    }

    /// Sends a command and returns its result (events that come meanwhile are skipped).
    @discardableResult
    func send(_ method: String, _ parameters: [String: Any] = [:]) async throws -> [String: Any] {
        nextID += 1
        let id = nextID
        let command = try JSONSerialization.data(withJSONObject: ["id": id, "method": method, "params": parameters])
        try await outbound.writeTextMessage(String(decoding: command, as: UTF8.self))
        while let message = try await messages.next() {
            guard case .text(let text) = message,
                let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                object["id"] as? Int == id
            else { continue }
            if let error = object["error"] as? [String: Any] {
                throw BrowserError("\(method): \(error["message"] ?? error)")
            }
            return object["result"] as? [String: Any] ?? [:]
        }
        throw BrowserError("the DevTools connection closed")
    }

    /// The value of a JavaScript expression in the page (a promise is awaited).
    @discardableResult
    func evaluate(_ expression: String) async throws -> Any? {
        let result = try await send("Runtime.evaluate", ["expression": expression, "returnByValue": true, "awaitPromise": true])
        if let exception = result["exceptionDetails"] as? [String: Any] {
            throw BrowserError("\(expression): \(exception["text"] ?? exception)")
        }
        return (result["result"] as? [String: Any])?["value"]
    }

    /// Loads `url` and waits until its document is complete.
    func open(_ url: String) async throws {
        try await send("Page.navigate", ["url": url])
        try await waitFor("location.href === \(jsString(url)) && document.readyState === 'complete'")
    }

    /// Waits until `condition` (JavaScript) is true: during a navigation the page's context is
    /// replaced, and an evaluation that fails meanwhile counts as false.
    func waitFor(_ condition: String, timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await evaluate("Boolean(\(condition))")) as? Bool == true { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw BrowserError("timed out waiting for \(condition)")
    }

    /// A JavaScript string literal.
    func jsString(_ text: String) -> String {
        let data = try! JSONSerialization.data(withJSONObject: [text])
        return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
    }

    /// A PNG of the page as it is shown.
    func screenshot() async throws -> Data {
        let height = try await evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom + 16)") as? Int ?? 900
        let result = try await send(
            "Page.captureScreenshot",
            ["format": "png", "captureBeyondViewport": true, "clip": ["x": 0, "y": 0, "width": 1280, "height": height, "scale": 1]])
        guard let base64 = result["data"] as? String, let data = Data(base64Encoded: base64) else {
            throw BrowserError("no screenshot")
        }
        return data
    }
}
