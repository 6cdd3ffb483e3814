import BackgroundSync
import Foundation

/// One page of a queue's entries in one state.
struct QueuePageView: Sendable {
    var name: String
    var state: EntryState
    /// The position after which this page starts (`nil`: the first page).
    var after: Int64?
    var entries: [QueueStoreEntry]
    var hasMore: Bool
    var pending: Int
    var dead: Int
    var sync: SyncRunner.Outcome?
}

extension ReplayFailure {
    /// A few words for a table cell: `HTTP 503`, `no response`, `hook failed`…
    public var summary: String {
        switch kind {
        case .httpStatus: status.map { "HTTP \($0)" } ?? "HTTP error"
        case .noResponse: "no response"
        case .hookFailed: "hook failed"
        case .invalidRequest: "invalid request"
        case .unreadableEntry: "unreadable"
        case .setAside: "set aside"
        case .unrecorded: status.map { "HTTP \($0)" } ?? "failed"
        }
    }

    /// Whether a queue whose head failed this way waits for the operator: by default a queue
    /// pauses when the server answers 401 or 403.
    var pausesByDefault: Bool {
        kind == .httpStatus && (status == 401 || status == 403)
    }
}

/// The HTML of the dashboard's pages. Every value that came from the store goes through
/// ``escapeHTML(_:)``; links carry values through ``percentEncode(_:)``.
struct DashboardPages: Sendable {
    var storeDescription: String
    var formToken: String

    /// The address of a queue's page.
    static func queueLink(_ name: String, state: EntryState = .pending, notice: String? = nil) -> String {
        var link = "/queue?name=\(percentEncode(name))"
        if state == .dead { link += "&state=dead" }
        if let notice { link += "&notice=\(notice)" }
        return link
    }

    /// A whole document around a page's main region; `live`: the page refreshes it by itself.
    func document(title: String, main: String, live: Bool) -> String {
        """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(escapeHTML(title)) · bgsync</title>
        <link rel="stylesheet" href="/static/dashboard.css">
        <script src="/static/dashboard.js" defer></script>
        </head>
        <body>
        <header><h1><a href="/">bgsync dashboard</a></h1><span class="store">\(escapeHTML(storeDescription))</span></header>
        <main\(live ? " data-live" : "")>\(main)</main>
        </body>
        </html>
        """
    }

    func problem(_ message: String) -> String {
        "<p class=\"error\">\(escapeHTML(message))</p><p><a href=\"/\">All queues</a></p>"
    }

    func noticeLine(_ notice: String?) -> String {
        notice.map { "<p class=\"notice\" role=\"status\">\(escapeHTML($0))</p>" } ?? ""
    }

    /// A POST form of hidden fields and one button (the action asks for confirmation first).
    func button(_ label: String, action: String, fields: [String: String], danger: Bool = false) -> String {
        var html = "<form class=\"inline\" method=\"post\" action=\"\(action)\">"
        html += "<input type=\"hidden\" name=\"form\" value=\"\(formToken)\">"
        for (name, value) in fields.sorted(by: { $0.key < $1.key }) where !value.isEmpty {
            html += "<input type=\"hidden\" name=\"\(escapeHTML(name))\" value=\"\(escapeHTML(value))\">"
        }
        html += "<button type=\"submit\"\(danger ? " class=\"danger\"" : "")>\(escapeHTML(label))</button></form>"
        return html
    }

    // MARK: Pages

    func queueList(_ queues: [QueueSummary], syncs: [String: SyncRunner.Outcome], now: Date, notice: String?) -> String {
        var html = "<h2>Queues</h2>" + noticeLine(notice)
        guard !queues.isEmpty else { return html + "<p class=\"muted\">No queues in this store yet.</p>" }
        html += """
            <table id="queues"><thead><tr><th>Queue</th><th class="num">Pending</th><th class="num">Dead letters</th>\
            <th>Oldest</th><th>State</th><th>Next attempt</th><th>Actions</th></tr></thead><tbody>
            """
        for queue in queues {
            let link = Self.queueLink(queue.name)
            let deadLink = Self.queueLink(queue.name, state: .dead)
            var state = queue.size == 0 ? "<span class=\"muted\">empty</span>" : "waiting"
            if let failure = queue.headLastFailure {
                state = failure.pausesByDefault
                    ? "<span class=\"bad\">paused: \(escapeHTML(failure.summary)) at the head</span>"
                    : "retrying: \(escapeHTML(failure.summary))"
            }
            if let sync = syncs[queue.name] { state += "<br><span class=\"muted\">\(escapeHTML(describe(sync, now: now)))</span>" }
            var actions = ""
            if queue.name.hasPrefix(Queue.outboxNamePrefix) {
                actions += "<span class=\"muted\" title=\"uploaded by the app that owns it\">outbox</span> "
            } else if queue.size > 0 {
                actions += button("Sync now", action: "/sync", fields: ["name": queue.name]) + " "
            }
            if queue.deadLetterCount > 0 {
                actions += button("Requeue dead letters", action: "/requeue", fields: ["name": queue.name]) + " "
                actions += button("Purge dead letters", action: "/purge", fields: ["name": queue.name], danger: true)
            }
            html += """
                <tr data-queue="\(escapeHTML(queue.name))"><td><a href="\(escapeHTML(link))">\(escapeHTML(queue.name))</a></td>\
                <td class="num">\(queue.size)</td>\
                <td class="num">\(queue.deadLetterCount == 0 ? "0" : "<a href=\"\(escapeHTML(deadLink))\">\(queue.deadLetterCount)</a>")</td>\
                <td>\(queue.headTimestamp.map { formatAge(now.timeIntervalSince($0)) } ?? "-")</td>\
                <td>\(state)</td>\
                <td>\(queue.headNextAttemptAt.map { escapeHTML(formatDate($0, now: now)) } ?? (queue.size > 0 ? "due now" : "-"))</td>\
                <td>\(actions)</td></tr>
                """
        }
        return html + "</tbody></table>"
    }

    func queue(_ view: QueuePageView, now: Date, notice: String?) -> String {
        let pendingLink = Self.queueLink(view.name)
        let deadLink = Self.queueLink(view.name, state: .dead)
        var html = "<h2>Queue <q>\(escapeHTML(view.name))</q></h2>" + noticeLine(notice)
        html += "<nav class=\"tabs\">"
        html += "<a href=\"\(escapeHTML(pendingLink))\"\(view.state == .pending ? " aria-current=\"page\"" : "")>Pending (<span id=\"pending-count\">\(view.pending)</span>)</a>"
        html += "<a href=\"\(escapeHTML(deadLink))\"\(view.state == .dead ? " aria-current=\"page\"" : "")>Dead letters (<span id=\"dead-count\">\(view.dead)</span>)</a>"
        html += "<a href=\"/\">All queues</a></nav>"
        if let sync = view.sync { html += "<p class=\"muted\">\(escapeHTML(describe(sync, now: now)))</p>" }
        var actions: [String] = []
        if view.state == .pending, view.pending > 0, !view.name.hasPrefix(Queue.outboxNamePrefix) {
            actions.append(button("Sync now", action: "/sync", fields: ["name": view.name]))
        }
        if view.state == .dead, view.dead > 0 {
            actions.append(button("Requeue all dead letters", action: "/requeue", fields: ["name": view.name]))
            actions.append(button("Purge dead letters", action: "/purge", fields: ["name": view.name], danger: true))
        }
        if !actions.isEmpty { html += "<p>" + actions.joined(separator: " ") + "</p>" }
        guard !view.entries.isEmpty else {
            return html + "<p class=\"muted\">\(view.after == nil ? "No entries." : "No more entries.")</p>" + paging(view)
        }
        let failureHeader = view.state == .dead ? "<th>Why</th><th>Server's answer</th>" : "<th>Last failure</th><th>Next attempt</th>"
        html += """
            <table id="entries"><thead><tr><th class="num">Id</th><th>Method</th><th>URL</th><th>Age</th>\
            <th class="num">Attempts</th>\(failureHeader)<th>Actions</th></tr></thead><tbody>
            """
        for entry in view.entries {
            let failure = entry.lastFailure
            var cells: String
            if view.state == .dead {
                cells = "<td>\(escapeHTML(failure?.summary ?? "-"))</td><td>\(escapeHTML(excerpt(failure, limit: 160) ?? failure?.message ?? "-"))</td>"
            } else {
                cells = "<td>\(escapeHTML(failure?.summary ?? "-"))</td>"
                cells += "<td>\(entry.nextAttemptAt.map { escapeHTML(formatDate($0, now: now)) } ?? "due")</td>"
            }
            var actions = ""
            if view.state == .dead {
                actions += button("Requeue", action: "/requeue", fields: ["name": view.name, "id": String(entry.id)]) + " "
            }
            actions += button("Delete", action: "/delete", fields: ["id": String(entry.id)], danger: true)
            html += """
                <tr data-entry="\(entry.id)"><td class="num"><a href="/entry?id=\(entry.id)">\(entry.id)</a></td>\
                <td>\(escapeHTML(entry.requestData.method))</td>\
                <td class="url">\(escapeHTML(MaskedRequest.url(entry.requestData.url)))</td>\
                <td>\(formatAge(now.timeIntervalSince(entry.timestamp)))</td>\
                <td class="num">\(entry.attempts)</td>\(cells)<td>\(actions)</td></tr>
                """
        }
        return html + "</tbody></table>" + paging(view)
    }

    /// Links to the first page and the next one: pages follow positions, so a page costs its own
    /// size whatever the queue's.
    func paging(_ view: QueuePageView) -> String {
        var links: [String] = []
        let base = Self.queueLink(view.name, state: view.state)
        if view.after != nil { links.append("<a href=\"\(escapeHTML(base))\">First page</a>") }
        if view.hasMore, let last = view.entries.last {
            links.append("<a rel=\"next\" href=\"\(escapeHTML(base + "&after=\(last.position)"))\">Next page</a>")
        }
        return links.isEmpty ? "" : "<nav class=\"paging\">" + links.joined() + "</nav>"
    }

    func entry(_ entry: QueueStoreEntry, now: Date) -> String {
        let data = entry.requestData
        var html = "<h2>Entry \(entry.id)</h2>"
        html += "<p><a href=\"\(escapeHTML(Self.queueLink(entry.queueName, state: entry.state)))\">Back to <q>\(escapeHTML(entry.queueName))</q></a></p>"
        html += "<dl>"
        html += "<dt>Queue</dt><dd>\(escapeHTML(entry.queueName))</dd>"
        html += "<dt>State</dt><dd>\(entry.state == .dead ? "<span class=\"bad\">dead letter</span>" : "pending")</dd>"
        html += "<dt>Request</dt><dd><code>\(escapeHTML(data.method)) \(escapeHTML(MaskedRequest.url(data.url)))</code></dd>"
        html += "<dt>Queued</dt><dd>\(escapeHTML(formatDate(entry.timestamp, now: now)))</dd>"
        html += "<dt>Failed attempts</dt><dd>\(entry.attempts)</dd>"
        if let next = entry.nextAttemptAt { html += "<dt>Next attempt</dt><dd>\(escapeHTML(formatDate(next, now: now)))</dd>" }
        if let key = entry.idempotencyKey { html += "<dt>Idempotency key</dt><dd><code>\(escapeHTML(key))</code></dd>" }
        if let record = entry.recordKey { html += "<dt>Record</dt><dd><code>\(escapeHTML(record))</code></dd>" }
        for (name, value) in (entry.metadata ?? [:]).sorted(by: { $0.key < $1.key }) {
            html += "<dt>Metadata <code>\(escapeHTML(name))</code></dt><dd>\(escapeHTML(value))</dd>"
        }
        html += "</dl>"
        html += "<h3>Replay history</h3>"
        if let failure = entry.lastFailure {
            html += "<p>Last failure: <strong>\(escapeHTML(failure.summary))</strong> — \(escapeHTML(failure.message))"
            html += " <span class=\"muted\">(\(entry.attempts) failed attempt\(entry.attempts == 1 ? "" : "s") in all)</span></p>"
            if let excerpt = excerpt(failure, limit: 1024) {
                html += "<p class=\"muted\">The server answered:</p><pre id=\"response\">\(escapeHTML(excerpt))</pre>"
            }
        } else {
            html += "<p class=\"muted\">\(entry.attempts == 0 ? "Not sent yet, or no answer recorded." : "\(entry.attempts) failed attempts, no failure recorded.")</p>"
        }
        html += "<h3>Header fields</h3>"
        let headers = MaskedRequest.headers(of: entry)
        if headers.isEmpty {
            html += "<p class=\"muted\">None.</p>"
        } else {
            html += "<table id=\"headers\"><tbody>"
            for (name, value) in headers.sorted(by: { $0.key.lowercased() < $1.key.lowercased() }) {
                html += "<tr><th>\(escapeHTML(name))</th><td class=\"url\">\(escapeHTML(value))</td></tr>"
            }
            html += "</tbody></table>"
        }
        html += "<h3>Body</h3>" + body(data.body)
        var actions: [String] = []
        if entry.state == .dead {
            actions.append(button("Requeue", action: "/requeue", fields: ["name": entry.queueName, "id": String(entry.id)]))
        }
        actions.append(button("Delete", action: "/delete", fields: ["id": String(entry.id)], danger: true))
        return html + "<p>" + actions.joined(separator: " ") + "</p>"
    }

    /// A body as text (its first 64 KiB) when it is UTF-8, else a hex dump of its first 4 KiB.
    func body(_ data: Data?) -> String {
        guard let data, !data.isEmpty else { return "<p class=\"muted\">No body.</p>" }
        let size = "<p class=\"muted\">\(data.count) bytes</p>"
        // Cut at a character's start (back over at most 3 continuation bytes): a prefix that ends
        // inside a multi-byte character is not UTF-8.
        var end = min(data.count, 65_536)
        var back = 0
        while end < data.count, back < 3, data[data.startIndex + end] & 0xC0 == 0x80 {
            end -= 1
            back += 1
        }
        if let text = String(data: data.prefix(end), encoding: .utf8) {
            let more = data.count > end ? "\n… \(data.count - end) more bytes" : ""
            return size + "<pre id=\"body\">\(escapeHTML(text + more))</pre>"
        }
        return size + "<pre id=\"body\" class=\"hex\">\(escapeHTML(hexDump(data, limit: 4_096)))</pre>"
    }

    /// The start of the server's answer: up to `limit` characters of text when it is UTF-8, else
    /// a hex dump.
    func excerpt(_ failure: ReplayFailure?, limit: Int) -> String? {
        guard let data = failure?.responseExcerpt, !data.isEmpty else { return nil }
        guard let text = String(data: data, encoding: .utf8) else { return hexDump(data, limit: min(limit, 256)) }
        return text.count > limit ? String(text.prefix(limit)) + "…" : text
    }

    func describe(_ sync: SyncRunner.Outcome, now: Date) -> String {
        let age = formatAge(now.timeIntervalSince(sync.at))
        switch sync.phase {
        case .waiting: return "sync asked for \(age) ago, waiting for another"
        case .running: return "syncing (started \(age) ago)"
        case .succeeded(let left): return "last sync from this page succeeded \(age) ago; \(left) left"
        case .failed(let message): return "last sync from this page failed \(age) ago: \(message)"
        }
    }

    /// The page that asks before an action: the same form, confirmed.
    func confirm(question: String, action: String, fields: [String: String], button label: String, danger: Bool = false, cancel: String)
        -> String
    {
        var confirmed = fields
        confirmed["confirm"] = "yes"
        return "<h2>Confirm</h2><p id=\"question\">\(escapeHTML(question))</p><p>"
            + button(label, action: action, fields: confirmed, danger: danger)
            + " <a href=\"\(escapeHTML(cancel))\">Cancel</a></p>"
    }
}
