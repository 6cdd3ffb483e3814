import Foundation
import Testing

@Suite("bgsync demo")
struct DemoCommandTests {
    @Test func theDemoTellsTheWholeStoryAndExitsZero() throws {
        let process = Process()
        process.executableURL = builtProductURL("bgsync")
        process.arguments = ["demo"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(text)")
        #expect(text.contains("queued as entry 3"))
        #expect(text.contains("The queue holds 3 entries"))
        #expect(text.contains("Delivered 3 of 3 posts; 0 left in the queue"))
    }
}
