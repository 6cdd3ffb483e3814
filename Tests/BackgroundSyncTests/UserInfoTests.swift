@testable import BackgroundSync
import Testing

@Suite("User information in URLs")
struct UserInfoTests {
    /// The user information is the authority's part before its last `@`; the rest of the URL is
    /// kept byte for byte, and putting the information back gives the URL again.
    @Test(arguments: [
        ("https://user:pw@a.example/p", "https://a.example/p", "user:pw"),
        ("https://u:p%40ss@a.example:8443/p?q=1#f", "https://a.example:8443/p?q=1#f", "u:p%40ss"),
        ("https://a.example/p@q?r=s://t@u", "https://a.example/p@q?r=s://t@u", nil),
        ("https://a@b@c.example", "https://c.example", "a@b"),
        ("mailto:x@a.example?body=http://u:p@h", "mailto:x@a.example?body=http://u:p@h", nil),
        ("a/b://u:p@h", "a/b://u:p@h", nil),
        ("https://ü:é@a.example/日本?ü", "https://a.example/日本?ü", "ü:é"),
        // A combining mark after a delimiter makes one Character of both: the bytes still count.
        ("https://u:p@\u{301}a.example/", "https://\u{301}a.example/", "u:p"),
        ("https://u:p@a.example/\u{301}x", "https://a.example/\u{301}x", "u:p"),
        ("https://e\u{301}:p@a.example/", "https://a.example/", "e\u{301}:p"),
        ("HTTPS://u:p@a.example/", "HTTPS://a.example/", "u:p"),
        ("svn+ssh://u@a.example/r", "svn+ssh://a.example/r", "u"),
        ("http://u:p@[::1]:80/x@y", "http://[::1]:80/x@y", "u:p"),
        ("://u:p@h/", "://u:p@h/", nil),
        ("1http://u:p@h/", "1http://u:p@h/", nil),
        ("http:/u:p@h/", "http:/u:p@h/", nil),
        ("http:", "http:", nil),
        ("https://a.example", "https://a.example", nil),
        ("", "", nil),
    ] as [(String, String, String?)])
    func splitsAndPutsBack(url: String, stripped: String, userInfo: String?) {
        let split = SecretSealer.splitUserInfo(url)
        #expect(Array(split.url.utf8) == Array(stripped.utf8))
        #expect(split.userInfo.map { Array($0.utf8) } == userInfo.map { Array($0.utf8) })
        if let info = split.userInfo {
            #expect(Array(SecretSealer.insertUserInfo(info, into: split.url).utf8) == Array(url.utf8))
        }
    }
}
