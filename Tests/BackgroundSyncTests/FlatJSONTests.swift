@testable import BackgroundSync
import Foundation
import Testing

@Suite("FlatJSON")
struct FlatJSONTests {
    @Test(arguments: [
        [:],
        ["content-type": "application/json"],
        ["quote": #"say "hi""#, "back\\slash": "a\\b", "lines": "one\ntwo\r\tthree", "control": "\u{1}\u{1f}"],
        ["unicode": "café — 日本語 🚀", "empty": ""],
    ] as [[String: String]])
    func decodesBackToTheSameDictionary(object: [String: String]) throws {
        let text = FlatJSON.encode(object)
        #expect(try JSONDecoder().decode([String: String].self, from: Data(text.utf8)) == object)
    }

    @Test func keysAreSorted() {
        #expect(FlatJSON.encode(["b": "2", "a": "1"]) == #"{"a":"1","b":"2"}"#)
    }
}
