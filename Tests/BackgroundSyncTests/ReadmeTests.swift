import Foundation
import Testing

/// The Swift blocks of the README and of docs/ are code that builds: each one appears in
/// `ReadmeSnippets/`, which the test target compiles (Apple-only ones there behind `#if`, compiled
/// on those platforms; the testing page's tests run with the others).
@Suite("README")
struct ReadmeTests {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The pages whose Swift blocks are checked.
    static let pages = ["README.md", "docs/TestingBackgroundSync.md"]

    /// The ```swift blocks of a page, in order.
    static func blocks(of page: String) throws -> [String] {
        let text = try String(contentsOf: root.appendingPathComponent(page), encoding: .utf8)
        return text.components(separatedBy: "```swift\n").dropFirst().map { $0.components(separatedBy: "```")[0] }
    }

    /// The README's ```swift blocks, in order.
    static func readmeBlocks() throws -> [String] { try blocks(of: "README.md") }

    /// A block without its import lines (those are at the top of the snippet file), trimmed.
    static func normalized(_ block: String) -> (body: String, imports: [String]) {
        var imports: [String] = []
        var lines: [String] = []
        for line in block.components(separatedBy: "\n") {
            if line.hasPrefix("import ") || line.hasPrefix("@preconcurrency import ") {
                imports.append(String(line.split(separator: " ").last!))
            } else if line != "#if canImport(FoundationNetworking)" && line != "#endif" {
                lines.append(line)
            }
        }
        return (lines.joined(separator: "\n").trimmingCharacters(in: .newlines), imports)
    }

    /// Every `README: begin` … `README: end` region of the snippet files, dedented, with its file.
    static func snippetRegions() throws -> [(file: String, text: String, source: String)] {
        let folder = root.appendingPathComponent("Tests/BackgroundSyncTests/ReadmeSnippets")
        var regions: [(String, String, String)] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() {
            let source = try String(contentsOf: folder.appendingPathComponent(name), encoding: .utf8)
            var current: [String]?
            for line in source.components(separatedBy: "\n") {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                if trimmed == "// README: begin" {
                    current = []
                } else if trimmed == "// README: end", let lines = current {
                    let indent = lines.filter { !$0.isEmpty }.map { $0.prefix { $0 == " " }.count }.min() ?? 0
                    regions.append((name, lines.map { String($0.dropFirst(min(indent, $0.count))) }.joined(separator: "\n"), source))
                    current = nil
                } else {
                    current?.append(line)
                }
            }
        }
        return regions
    }

    @Test func everySwiftBlockIsCompiledCode() throws {
        let regions = try Self.snippetRegions()
        var used = Set<String>()
        let blocks = try Self.pages.flatMap { page in try Self.blocks(of: page).map { (page, $0) } }
        for (page, block) in blocks where !block.hasPrefix("// Package.swift") {
            let (body, imports) = Self.normalized(block)
            let match = regions.first { $0.text == body }
            #expect(match != nil, "\(page) block not found in ReadmeSnippets/ (update both):\n\(body)")
            guard let match else { continue }
            used.insert(match.text)
            for module in imports {
                #expect(match.source.contains("import \(module)\n"), "\(match.file) does not import \(module)")
            }
        }
        for region in regions where !used.contains(region.text) {
            Issue.record("\(region.file) holds a snippet the pages no longer have:\n\(region.text)")
        }
    }

    @Test func theInstallSnippetNamesProductsThePackageHas() throws {
        let install = try #require(try Self.readmeBlocks().first { $0.hasPrefix("// Package.swift") })
        let manifest = try String(contentsOf: Self.root.appendingPathComponent("Package.swift"), encoding: .utf8)
        #expect(manifest.contains(#"name: "swift-background-sync""#))
        let products = install.components(separatedBy: #".product(name: ""#).dropFirst().map { $0.prefix { $0 != "\"" } }
        #expect(products.count >= 4)
        for product in products {
            #expect(manifest.contains(#".library(name: "\#(product)""#), "Package.swift has no product \(product)")
        }
        #expect(install.contains(#"package: "swift-background-sync""#))
    }
}
