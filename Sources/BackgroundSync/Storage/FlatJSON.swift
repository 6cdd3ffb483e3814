/// Writes a `[String: String]` as a JSON object (keys sorted), the form header fields and
/// metadata take in the database. Hand-written because it runs on every enqueue and
/// `JSONEncoder` costs more than the rest of the encoding together; `JSONDecoder` reads it back.
enum FlatJSON {
    static func encode(_ object: [String: String]) -> String {
        var out = "{"
        for (index, key) in object.keys.sorted().enumerated() {
            if index > 0 { out += "," }
            appendString(key, to: &out)
            out += ":"
            appendString(object[key] ?? "", to: &out)
        }
        out += "}"
        return out
    }

    private static func appendString(_ text: String, to out: inout String) {
        out += "\""
        // Most header values need no escaping: copy them whole.
        if !text.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out += text
            out += "\""
            return
        }
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
