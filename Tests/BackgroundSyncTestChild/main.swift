// A child process for the crash tests: it pushes or replays on a database file given on the
// command line, and the test kills it with SIGKILL part-way.
//
//   BackgroundSyncTestChild push DB QUEUE COUNT URL   pushes COUNT POSTs, printing each id once committed
//   BackgroundSyncTestChild replay DB QUEUE           replays the queue, then prints the summary
//   BackgroundSyncTestChild drain DB QUEUE [CONCURRENCY]  replays until the queue is empty, waiting out
//                                                     another process's lease
//   BackgroundSyncTestChild connectivity              prints each status of the netlink monitor
import BackgroundSync
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

let arguments = CommandLine.arguments
#if os(Linux)
if arguments.count == 2 && arguments[1] == "connectivity" {
    for await status in NetlinkConnectivityMonitor().statusUpdates() {
        FileHandle.standardOutput.write(Data("\(status)\n".utf8))
    }
    exit(0)
}
#endif
guard arguments.count >= 4 else {
    FileHandle.standardError.write(Data("usage: BackgroundSyncTestChild push|replay DB QUEUE [COUNT URL]\n".utf8))
    exit(2)
}
let database = try SQLiteQueueDatabase(path: arguments[2])
let concurrency = arguments.count > 4 && arguments[1] == "drain" ? Int(arguments[4]) ?? 1 : 1
let queue = try Queue(
    name: arguments[3], options: QueueOptions(maxConcurrentReplays: concurrency), database: database)
switch arguments[1] {
case "push":
    let count = Int(arguments[4])!
    let url = URL(string: arguments[5])!
    for index in 0..<count {
        var request = URLRequest(url: url)
        request.httpMethod = "POST"
        request.httpBody = Data("post-\(index)".utf8)
        let id = try await queue.pushRequest(request)
        FileHandle.standardOutput.write(Data("pushed \(id)\n".utf8))
    }
case "replay":
    let summary = try await queue.replayRequests()
    print("delivered \(summary.delivered)")
case "drain":
    var delivered = 0
    while try await queue.size() > 0 {
        do {
            delivered += try await queue.replayRequests().delivered
        } catch let error as BackgroundSyncError where error.code == .queueReplayFailed {
            // The other process holds the head: let it work, then look again.
            try await Task.sleep(for: .milliseconds(5))
        }
    }
    print("delivered \(delivered)")
default:
    exit(2)
}
