import BackgroundSync
import BackgroundSyncTesting
import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@Suite("StorableRequest")
struct StorableRequestTests {
    @Test func roundTripKeepsMethodHeadersBodyAndSettings() throws {
        var request = URLRequest(url: URL(string: "https://example.com/api/posts?draft=1")!)
        request.httpMethod = "PUT"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("abc", forHTTPHeaderField: "X-Custom")
        request.httpBody = Data(#"{"title":"hello"}"#.utf8)
        request.timeoutInterval = 12
        request.cachePolicy = .reloadIgnoringLocalCacheData
        request.httpShouldHandleCookies = false
        request.allowsCellularAccess = false
        request.mainDocumentURL = URL(string: "https://example.com/")

        let storable = try StorableRequest.fromRequest(request)
        let data = storable.toObject()
        #expect(data.url == "https://example.com/api/posts?draft=1")
        #expect(data.method == "PUT")
        #expect(data.headers == ["content-type": "application/json", "x-custom": "abc"])
        #expect(data.body == Data(#"{"title":"hello"}"#.utf8))

        let rebuilt = storable.toRequest()
        #expect(rebuilt.url == request.url)
        #expect(rebuilt.httpMethod == "PUT")
        #expect(rebuilt.httpBody == request.httpBody)
        #expect(rebuilt.value(forHTTPHeaderField: "Content-Type") == "application/json")
        #expect(rebuilt.value(forHTTPHeaderField: "x-custom") == "abc")
        #expect(rebuilt.timeoutInterval == 12)
        #expect(rebuilt.cachePolicy == .reloadIgnoringLocalCacheData)
        #expect(rebuilt.httpShouldHandleCookies == false)
        #expect(rebuilt.allowsCellularAccess == false)
        #expect(rebuilt.mainDocumentURL == URL(string: "https://example.com/"))
        #expect(rebuilt.allHTTPHeaderFields?.count == 2)

        // A GET with the defaults rebuilds to the defaults.
        let plain = try StorableRequest(requestData: .init(url: "https://example.com/a", method: "GET")).toRequest()
        #expect(plain.httpMethod == "GET")
        #expect(plain.httpShouldHandleCookies && plain.allowsCellularAccess)
        #expect(plain.cachePolicy == .useProtocolCachePolicy)
        #expect(plain.timeoutInterval == 60)
        #expect(plain.mainDocumentURL == nil)
    }

    @Test func requestDataIsNormalisedWithUnicodeCaseMapping() throws {
        // Already normal: kept as it is. Otherwise cased as `uppercased()`/`lowercased()` do,
        // non-ASCII letters included (the long s of "POſT" upper-cases to S, the Kelvin sign
        // lower-cases to k).
        let normal = try StorableRequest(requestData: .init(
            url: "https://example.com/a", method: "POST", headers: ["content-type": "text/plain"], body: Data("x".utf8)))
        #expect(normal.toObject().method == "POST")
        #expect(normal.toObject().headers == ["content-type": "text/plain"])
        let cased = try StorableRequest(requestData: .init(
            url: "https://example.com/a", method: "po\u{17F}t", headers: ["\u{212A}eep-Alive": "5", "X-A": "1"],
            body: Data("x".utf8)))
        #expect(cased.toObject().method == "POST")
        #expect(cased.toObject().headers == ["keep-alive": "5", "x-a": "1"])
    }

    @Test func requestDataSurvivesJSONAndOlderDataDecodes() throws {
        let storable = try StorableRequest(requestData: .init(
            url: "http://localhost:8080/x", method: "post", headers: ["X-A": "1"], body: Data([0, 1, 2])))
        #expect(storable.method == "POST")
        #expect(storable.toObject().headers == ["x-a": "1"])
        let json = try JSONEncoder().encode(storable.toObject())
        let decoded = try JSONDecoder().decode(StorableRequest.RequestData.self, from: json)
        #expect(decoded == storable.toObject())

        let minimal = try JSONDecoder().decode(
            StorableRequest.RequestData.self, from: Data(#"{"url":"https://a.example/"}"#.utf8))
        #expect(minimal.method == "GET")
        #expect(minimal.timeoutInterval == 60)
    }

    @Test func cloneIsEqualAndIndependent() throws {
        let original = try StorableRequest(requestData: .init(url: "https://a.example/", method: "DELETE"))
        let copy = original.clone()
        #expect(copy == original)
        var object = copy.toObject()
        object.method = "PATCH"
        #expect(original.toObject().method == "DELETE")
    }

    @Test func bodyStreamIsReadToTheEnd() throws {
        var request = URLRequest(url: URL(string: "https://a.example/upload")!)
        request.httpMethod = "POST"
        let payload = Data((0..<200_000).map { UInt8($0 % 251) })
        request.httpBodyStream = InputStream(data: payload)
        #expect(try StorableRequest.fromRequest(request).toObject().body == payload)
    }

    @Test(arguments: [
        ("ftp://example.com/file", "scheme 'ftp'"),
        ("/relative/path", "not an absolute URL"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("http://", "has no host"),
    ])
    func rejectsURLsThatCannotBeReplayed(url: String, message: String) throws {
        let error = try #require(throws: BackgroundSyncError.self) {
            try StorableRequest(requestData: .init(url: url, method: "POST"))
        }
        #expect(error.code == .invalidRequest)
        #expect(error.description.contains(message), "\(error)")
    }

    @Test func rejectsBodyOnGetAndBadMethod() throws {
        var get = URLRequest(url: URL(string: "https://a.example/")!)
        get.httpBody = Data("x".utf8)
        let error = try #require(throws: BackgroundSyncError.self) { try StorableRequest.fromRequest(get) }
        #expect(error.code == .invalidRequest)
        #expect(error.description.contains("GET"))

        #expect(throws: BackgroundSyncError.self) {
            try StorableRequest(requestData: .init(url: "https://a.example/", method: "PO ST"))
        }
    }

    @Test(arguments: [
        ("X-A", "b\r\nX-Evil: 1", "holds a control character (0x0D)"),
        ("X-A", "b\u{01}c", "holds a control character (0x01)"),
        ("X-A", "b\u{7F}", "holds a control character (0x7F)"),
        ("X A", "b", "header name 'x a' is not a token"),
        ("X-A:", "b", "is not a token"),
        ("", "b", "a header field has an empty name"),
    ])
    func headerFieldsThatAreNotHTTPAreRefused(name: String, value: String, message: String) throws {
        let error = try #require(throws: BackgroundSyncError.self) {
            try StorableRequest(requestData: .init(url: "https://api.example.com/x", headers: [name: value]))
        }
        #expect(error.code == .invalidRequest)
        #expect(error.message.contains(message), "\(error.message)")
        // A tab inside a value is fine.
        _ = try StorableRequest(requestData: .init(url: "https://api.example.com/x", headers: ["X-A": "b\tc"]))
    }
}

