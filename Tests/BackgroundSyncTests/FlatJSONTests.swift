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
        ["mixed": "é\"日本\n🚀\\\u{7}e\u{301}", "ké\ty": "\u{1f}ü"],
    ] as [[String: String]])
    func decodesBackToTheSameDictionary(object: [String: String]) throws {
        let text = FlatJSON.encode(object)
        #expect(try JSONDecoder().decode([String: String].self, from: Data(text.utf8)) == object)
    }

    @Test(arguments: [
        [:],
        ["content-type": "application/json"],
        ["quote": #"say "hi""#, "back\\slash": "a\\b", "lines": "one\ntwo\r\tthree", "control": "\u{1}\u{1f}"],
        ["unicode": "café — 日本語 🚀", "empty": "", "url": "https://a.example/p?q=1&r=2"],
    ] as [[String: String]])
    func readsBackWhatItWritesAndWhatJSONEncoderWrites(object: [String: String]) throws {
        #expect(try FlatJSON.decode(FlatJSON.encode(object)) == object)
        let foundation = String(decoding: try JSONEncoder().encode(object), as: UTF8.self)
        #expect(try FlatJSON.decode(foundation) == object)
    }

    /// Whatever JSON object of strings `JSONDecoder` reads, this reads the same way.
    @Test(arguments: [
        #" { "a" : "1" , "b":"2" } "#,
        "{\n\t\"a\":\"x\"\r\n}",
        #"{"escapes":"\"\\\/\b\f\n\r\t"}"#,
        #"{"bmp":"\u00e9\u65E5","pair":"\ud83d\ude80","zero":"\u0000"}"#,
        #"{"dup":"first","dup":"second"}"#,
    ])
    func readsAsJSONDecoderDoes(text: String) throws {
        let expected = try JSONDecoder().decode([String: String].self, from: Data(text.utf8))
        #expect(try FlatJSON.decode(text) == expected)
    }

    @Test(arguments: [
        "", "[]", "{", #"{"a":1}"#, #"{"a":null}"#, #"{"a":"1"} x"#, #"{"a":"\x"}"#,
        #"{"a":"\ud83d"}"#, #"{"a":"\u12"}"#, "{\"a\":\"tab\there\"}",
    ])
    func refusesWhatIsNotAnObjectOfStrings(text: String) {
        #expect(throws: (any Error).self) { try FlatJSON.decode(text) }
    }

    /// Escapes are written byte by byte: multi-byte characters go through as they are, next to
    /// the escaped ones.
    @Test func escapesNextToMultiByteCharacters() {
        #expect(FlatJSON.encode(["k": "é\"日\n🚀\\\u{7}"]) == #"{"k":"é\"日\n🚀\\\u0007"}"#)
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
