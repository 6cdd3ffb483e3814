import Foundation

extension UUID {
    /// The canonical lower-case form (`uuidString.lowercased()`), written in one pass.
    var lowercasedString: String {
        withUnsafeBytes(of: uuid) { bytes in
            let digits = Array("0123456789abcdef".utf8)
            var text = [UInt8]()
            text.reserveCapacity(36)
            for (index, byte) in bytes.enumerated() {
                if index == 4 || index == 6 || index == 8 || index == 10 { text.append(UInt8(ascii: "-")) }
                text.append(digits[Int(byte >> 4)])
                text.append(digits[Int(byte & 0x0F)])
            }
            return String(decoding: text, as: UTF8.self)
        }
    }
}
