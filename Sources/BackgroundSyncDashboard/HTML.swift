import Foundation

/// Text made safe for HTML: every value that came from a store (queue names, URLs, header fields,
/// bodies, server answers) goes through here, so that a stored request holding markup or script
/// shows as text. Escapes `&`, `<`, `>`, `"` and `'`, so the result is safe in element content
/// and in quoted attribute values alike.
func escapeHTML(_ text: String) -> String {
    // By scalar, not by character: a quote followed by a combining mark is one character, and
    // would not equal `"`.
    var escaped = String.UnicodeScalarView()
    for scalar in text.unicodeScalars {
        switch scalar {
        case "&": escaped.append(contentsOf: "&amp;".unicodeScalars)
        case "<": escaped.append(contentsOf: "&lt;".unicodeScalars)
        case ">": escaped.append(contentsOf: "&gt;".unicodeScalars)
        case "\"": escaped.append(contentsOf: "&quot;".unicodeScalars)
        case "'": escaped.append(contentsOf: "&#39;".unicodeScalars)
        default: escaped.append(scalar)
        }
    }
    return String(escaped)
}

/// `value` encoded for a query string or a form field: everything but unreserved characters is
/// percent-encoded (a `+` or `&` in a queue name stays part of the value).
func percentEncode(_ value: String) -> String {
    var allowed = CharacterSet.alphanumerics
    allowed.insert(charactersIn: "-._~")
    allowed.formIntersection(CharacterSet(charactersIn: Unicode.Scalar(0)..<Unicode.Scalar(128)))
    return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
}

/// The fields of an `application/x-www-form-urlencoded` body (or a query string): `+` is a space,
/// `%XX` a byte; a field without `=` has an empty value. The first of repeated fields wins.
func formFields(_ body: String) -> [String: String] {
    var fields: [String: String] = [:]
    for pair in body.split(separator: "&", omittingEmptySubsequences: true) {
        let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        func decode(_ part: Substring) -> String {
            let spaced = part.replacingOccurrences(of: "+", with: " ")
            return spaced.removingPercentEncoding ?? spaced
        }
        let name = decode(parts[0])
        if fields[name] == nil { fields[name] = parts.count > 1 ? decode(parts[1]) : "" }
    }
    return fields
}

/// An age in the unit an operator reads at a glance: `42s`, `5m`, `3h`, `2d` (`bgsync` prints
/// ages with it too).
public func formatAge(_ seconds: TimeInterval) -> String {
    // A timestamp far off (or not a number) must not trap the conversion.
    let value = seconds.isFinite ? Int(min(max(seconds, 0), 1e15)) : 0
    switch value {
    case ..<60: return "\(value)s"
    case ..<3600: return "\(value / 60)m"
    case ..<86400: return "\(value / 3600)h"
    default: return "\(value / 86400)d"
    }
}

/// A date as ISO 8601 in UTC (second precision), with how far it is from `now`.
func formatDate(_ date: Date, now: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    let delta = date.timeIntervalSince(now)
    let relative = delta >= 0 ? "in \(formatAge(delta))" : "\(formatAge(-delta)) ago"
    return "\(formatter.string(from: date)) (\(relative))"
}

/// The first `limit` bytes of `data` as a hex dump: offset, 16 bytes in hex, and their printable
/// ASCII (others as `.`).
func hexDump(_ data: Data, limit: Int) -> String {
    var lines: [String] = []
    let bytes = [UInt8](data.prefix(limit))
    for start in stride(from: 0, to: bytes.count, by: 16) {
        let row = bytes[start..<min(start + 16, bytes.count)]
        let hex = row.map { String(format: "%02x", $0) }.joined(separator: " ")
        let text = String(row.map { (0x20..<0x7F).contains($0) ? Character(Unicode.Scalar($0)) : "." })
        lines.append(String(format: "%08x  ", start) + hex.padding(toLength: 47, withPad: " ", startingAt: 0) + "  " + text)
    }
    if data.count > limit { lines.append("… \(data.count - limit) more bytes") }
    return lines.joined(separator: "\n")
}

/// The style sheet and the script of every page, served from memory (`/static/…`): the page
/// works on a machine without internet, and the content security policy allows no inline script.
enum StaticAssets {
    static let css = """
        :root { color-scheme: light dark; --muted: #666; --line: #ccc; --bad: #b00020; --ok: #1b5e20; }
        @media (prefers-color-scheme: dark) { :root { --muted: #aaa; --line: #444; --bad: #ff6b6b; --ok: #81c784; } }
        body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; }
        header { padding: .6rem 1.2rem; border-bottom: 1px solid var(--line); display: flex; gap: 1rem; align-items: baseline; }
        header h1 { font-size: 1.1rem; margin: 0; }
        header .store { color: var(--muted); font-family: ui-monospace, monospace; font-size: .85rem; overflow-wrap: anywhere; }
        main { padding: 1rem 1.2rem; max-width: 90rem; }
        h2 { font-size: 1.2rem; margin: .2rem 0 .8rem; overflow-wrap: anywhere; }
        h3 { font-size: 1rem; margin: 1.4rem 0 .5rem; }
        table { border-collapse: collapse; width: 100%; }
        th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
        th { font-weight: 600; white-space: nowrap; }
        table#headers { width: auto; }
        td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
        td.url { font-family: ui-monospace, monospace; font-size: .85rem; overflow-wrap: anywhere; max-width: 40rem; }
        pre { font: .85rem/1.4 ui-monospace, monospace; padding: .6rem; border: 1px solid var(--line); overflow: auto;
              max-height: 30rem; white-space: pre-wrap; overflow-wrap: anywhere; }
        dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0; }
        dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
        .muted { color: var(--muted); } .bad { color: var(--bad); } .ok { color: var(--ok); }
        .notice { padding: .5rem .8rem; border: 1px solid var(--ok); margin-bottom: 1rem; }
        .error { padding: .5rem .8rem; border: 1px solid var(--bad); margin-bottom: 1rem; }
        form.inline { display: inline; margin: 0; }
        button { font: inherit; padding: .15rem .6rem; cursor: pointer; }
        button.danger { color: var(--bad); }
        nav.paging { margin-top: .8rem; display: flex; gap: 1rem; }
        .tabs { display: flex; gap: 1rem; margin-bottom: .8rem; }
        .tabs a[aria-current] { font-weight: 600; text-decoration: none; }
        """

    /// Refreshes the page's live region (`<main data-live>`) every two seconds with what the
    /// server renders for the same address, while the page is visible and the operator is neither
    /// pressing a button nor selecting text in it (a refresh would eat the click or the selection;
    /// such a skipped tick sets `data-held`, and a refresh sets `data-refreshed`).
    /// A confirmation page has no live region. The server escapes every stored value, so the markup
    /// it sends is inert.
    static let script = """
        "use strict";
        (function () {
          const main = document.querySelector("main[data-live]");
          if (!main) return;
          let busy = false;
          let pressing = false;
          main.addEventListener("pointerdown", () => { pressing = true; });
          const released = () => { setTimeout(() => { pressing = false; }, 500); };
          window.addEventListener("pointerup", released);
          window.addEventListener("pointercancel", released);
          // What the server sent last (the browser re-serializes main.innerHTML differently).
          let last = null;
          function selecting() {
            const selection = window.getSelection();
            return selection !== null && !selection.isCollapsed && main.contains(selection.anchorNode);
          }
          async function refresh() {
            if (busy || document.hidden) return;
            if (pressing || selecting()) {
              main.dataset.held = String(Date.now());
              return;
            }
            busy = true;
            try {
              const response = await fetch(location.href, { headers: { "X-Dashboard-Live": "1" }, credentials: "same-origin" });
              if (response.ok) {
                const html = await response.text();
                if (html !== last) main.innerHTML = html;
                last = html;
                main.dataset.refreshed = String(Date.now());
              }
            } catch (e) {
              // The dashboard stopped or the network dropped: the next tick tries again.
            } finally {
              busy = false;
            }
          }
          setInterval(refresh, 2000);
        })();
        """
}
