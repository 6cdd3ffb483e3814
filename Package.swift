// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "swift-background-sync",
    platforms: [
        .macOS(.v13),
        .iOS(.v16),
        .tvOS(.v16),
        .watchOS(.v9),
    ],
    products: [
        .library(name: "BackgroundSync", targets: ["BackgroundSync"]),
        // Test doubles (manual clock, manual connectivity, scripted transport) and the store
        // conformance suite, for the tests of apps and of storage drivers.
        .library(name: "BackgroundSyncTesting", targets: ["BackgroundSyncTesting"]),
        // A transport on AsyncHTTPClient, for Linux services (links NIO: not for iOS apps).
        .library(name: "BackgroundSyncAsyncHTTPClient", targets: ["BackgroundSyncAsyncHTTPClient"]),
        // A swift-openapi-runtime client middleware that queues failed write operations (no NIO).
        .library(name: "BackgroundSyncOpenAPI", targets: ["BackgroundSyncOpenAPI"]),
        // A store on PostgreSQL (PostgresNIO), for queues shared by a fleet of hosts (links NIO).
        .library(name: "BackgroundSyncPostgres", targets: ["BackgroundSyncPostgres"]),
        // A web page on a store's queues, with /metrics and /healthz, for `bgsync dashboard` or a service built
        // with the library (Hummingbird: links NIO, not for iOS apps).
        .library(name: "BackgroundSyncDashboard", targets: ["BackgroundSyncDashboard"]),
        .executable(name: "bgsync", targets: ["bgsync"]),
    ],
    dependencies: [
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-openapi-runtime", from: "1.13.4"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/swift-openapi-async-http-client", from: "1.5.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        // Without its default traits: no swift-configuration, nothing that needs full Foundation.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // Tests only: a WebSocket client to drive headless Chromium through the DevTools protocol.
        .package(url: "https://github.com/hummingbird-project/swift-websocket", from: "1.6.2"),
    ],
    targets: [
        // The core: requests, queue, storage driver protocol, SQLite store, sync manager,
        // transports. Links no NIO so that an iOS app can import it.
        .target(
            name: "BackgroundSync",
            dependencies: [
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(name: "BackgroundSyncTesting", dependencies: ["BackgroundSync"]),
        .target(
            name: "BackgroundSyncAsyncHTTPClient",
            dependencies: [
                "BackgroundSync",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .target(
            name: "BackgroundSyncOpenAPI",
            dependencies: [
                "BackgroundSync",
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]
        ),
        .target(
            name: "BackgroundSyncPostgres",
            dependencies: [
                "BackgroundSync",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                // Its pool's errors (`ConnectionPoolError`), which PostgresNIO passes on as they are.
                .product(name: "_ConnectionPoolModule", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "BackgroundSyncDashboard",
            dependencies: [
                "BackgroundSync",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // A small HTTP/1.1 server on POSIX sockets, bound to loopback, with fault injection.
        // Used by `bgsync demo` and the tests; not a product.
        .target(name: "LoopbackHTTPServer"),
        // Programs started with posix_spawn, for the tests and PostgresTestServer (not Foundation's Process).
        .target(name: "ChildProcesses"),
        // A real PostgreSQL server of its own, for tests and the benchmark (Debian's postgresql).
        .target(name: "PostgresTestServer", dependencies: ["ChildProcesses"]),
        .executableTarget(
            name: "bgsync",
            dependencies: [
                "BackgroundSync",
                "BackgroundSyncPostgres",
                "BackgroundSyncDashboard",
                "LoopbackHTTPServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // `swift run -c release bgsync-bench`: figures as ratios against baselines in one run.
        .executableTarget(
            name: "bgsync-bench",
            dependencies: [
                "BackgroundSync",
                "BackgroundSyncAsyncHTTPClient",
                "BackgroundSyncPostgres",
                "BackgroundSyncDashboard",
                "LoopbackHTTPServer",
                "PostgresTestServer",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Benchmarks/bgsync-bench"
        ),
        // A child process the crash tests start and kill with SIGKILL.
        .executableTarget(
            name: "BackgroundSyncTestChild",
            dependencies: ["BackgroundSync"],
            path: "Tests/BackgroundSyncTestChild"
        ),
        .testTarget(
            name: "BackgroundSyncTests",
            dependencies: [
                "BackgroundSync",
                "BackgroundSyncTesting",
                "BackgroundSyncAsyncHTTPClient",
                "BackgroundSyncOpenAPI",
                "BackgroundSyncPostgres",
                "BackgroundSyncDashboard",
                "LoopbackHTTPServer",
                "PostgresTestServer",
                "ChildProcesses",
                "BackgroundSyncTestChild",
                "bgsync",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "_ConnectionPoolModule", package: "postgres-nio"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIAsyncHTTPClient", package: "swift-openapi-async-http-client"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "WSClient", package: "swift-websocket"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
