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

@Suite("UUID text")
struct UUIDTextTests {
    @Test func lowercasedStringIsTheCanonicalLowerCaseForm() {
        for _ in 0..<1000 {
            let uuid = UUID()
            #expect(uuid.lowercasedString == uuid.uuidString.lowercased())
        }
        let fixed = UUID(uuidString: "00FF10AB-C0DE-4A5B-9C8D-7E6F5A4B3C2D")!
        #expect(fixed.lowercasedString == "00ff10ab-c0de-4a5b-9c8d-7e6f5a4b3c2d")
    }
}
