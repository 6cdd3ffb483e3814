import ChildProcesses
import Foundation
import Testing

@Suite("bgsync demo")
struct DemoCommandTests {
    @Test func theDemoTellsTheWholeStoryAndExitsZero() throws {
        let run = try ChildProcess.run(builtProductURL("bgsync").path, ["demo"])
        let text = String(decoding: run.stdout, as: UTF8.self)
        #expect(run.status == 0, "\(text)\(String(decoding: run.stderr, as: UTF8.self))")
        #expect(text.contains("queued as entry 3"))
        #expect(text.contains("The queue holds 3 entries"))
        #expect(text.contains("Delivered 3 of 3 posts; 0 left in the queue"))
    }
}
