import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension UUID {
    /// A random (version 4) UUID from the system's random number generator.
    ///
    /// On the path of every push (the `Idempotency-Key`). Foundation's `UUID()` on Linux opens,
    /// reads and closes `/dev/urandom` each time (four system calls), and
    /// `SystemRandomNumberGenerator` makes one `getrandom` call per 8 bytes; this takes the bytes
    /// from a buffer that one call fills for 256 UUIDs. The bytes still come from the kernel's
    /// generator, unchanged and used once.
    static func random() -> UUID {
        var uuid = RandomBytes.shared.next16()
        withUnsafeMutableBytes(of: &uuid) { raw in
            raw[6] = (raw[6] & 0x0F) | 0x40  // version 4
            raw[8] = (raw[8] & 0x3F) | 0x80  // RFC 4122 variant
        }
        return UUID(uuid: uuid)
    }

    /// The canonical lower-case form (`uuidString.lowercased()`), written in one pass.
    var lowercasedString: String {
        withUnsafeBytes(of: uuid) { bytes in
            String(unsafeUninitializedCapacity: 36) { text in
                let digits: StaticString = "0123456789abcdef"
                var count = 0
                for (index, byte) in bytes.enumerated() {
                    if index == 4 || index == 6 || index == 8 || index == 10 {
                        text[count] = UInt8(ascii: "-")
                        count += 1
                    }
                    text[count] = digits.utf8Start[Int(byte >> 4)]
                    text[count + 1] = digits.utf8Start[Int(byte & 0x0F)]
                    count += 2
                }
                return count
            }
        }
    }
}

/// Random bytes from the system's generator, fetched 4 KiB at a time and handed out once each.
private final class RandomBytes: @unchecked Sendable {
    static let shared = RandomBytes()

    private let lock = NSLock()
    /// Guarded by `lock`.
    private var buffer = [UInt8](repeating: 0, count: 4096)
    /// Guarded by `lock`: the next unused byte; `buffer.count` when all are used.
    private var next = 4096

    func next16() -> uuid_t {
        lock.lock()
        defer { lock.unlock() }
        if next + 16 > buffer.count {
            buffer.withUnsafeMutableBytes(Self.fill)
            next = 0
        }
        var uuid: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        buffer.withUnsafeBytes { bytes in
            withUnsafeMutableBytes(of: &uuid) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[next..<next + 16])) }
        }
        // Zeroed once handed out, so that no byte of a key stays in the process to be read again.
        buffer.withUnsafeMutableBytes { bytes in
            for index in next..<next + 16 { bytes[index] = 0 }
        }
        next += 16
        return uuid
    }

    #if !canImport(Darwin)
    /// `/dev/urandom`, opened once (`-1` if it cannot be opened). `getrandom` is not in every
    /// glibc's Swift module, nor `arc4random_buf` before glibc 2.36.
    private static let urandom: Int32 = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
    #endif

    /// Fills `bytes` from the system's cryptographically secure generator.
    private static func fill(_ bytes: UnsafeMutableRawBufferPointer) {
        #if canImport(Darwin)
        arc4random_buf(bytes.baseAddress!, bytes.count)
        #else
        var filled = 0
        while urandom >= 0 && filled < bytes.count {
            let got = read(urandom, bytes.baseAddress! + filled, bytes.count - filled)
            if got > 0 {
                filled += got
            } else if got < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        // Not readable: the standard library's generator (one system call per 8 bytes).
        var generator = SystemRandomNumberGenerator()
        for index in filled..<bytes.count { bytes[index] = generator.next() }
        #endif
    }
}
