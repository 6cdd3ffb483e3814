// swift-tools-version:6.1
import PackageDescription

// The seed's story: a posts API (Hummingbird) and an app that writes posts while the API is down.
// A package of its own, so that swift-background-sync gains no dependency.
let package = Package(
    name: "Posts",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "swift-background-sync", path: "../.."),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .executableTarget(
            name: "posts",
            dependencies: [
                .product(name: "BackgroundSync", package: "swift-background-sync"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
