// swift-tools-version:6.1
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "chatd",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "ChatDomain", targets: ["ChatDomain"]),
        .library(name: "ChatAdapterSupport", targets: ["ChatAdapterSupport"]),
        .library(name: "ChatPresenceRedis", targets: ["ChatPresenceRedis"]),
        .library(name: "ChatStoreMongo", targets: ["ChatStoreMongo"]),
        .library(name: "ChatStoreSQLite", targets: ["ChatStoreSQLite"]),
        .library(name: "ChatBrokerAMQP", targets: ["ChatBrokerAMQP"]),
        .library(name: "ChatTransport", targets: ["ChatTransport"]),
        .library(name: "ChatEncryption", targets: ["ChatEncryption"]),
        .library(name: "ChatWebhook", targets: ["ChatWebhook"]),
        .executable(name: "chatd", targets: ["chatd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        // Without the default ConfigurationSupport trait: chatd reads its settings itself, and swift-configuration
        // would only add to every build (hummingbird-websocket asks for no traits either).
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.0", traits: ["FullFoundation"]),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.0"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        // The receipts webhook's HTTP client and its HMAC signature (swift-crypto also comes with jwt-kit).
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.8.0"..<"5.0.0"),
        // `swift package generate-documentation` (scripts/docs.sh): the DocC catalogs of ChatDomain and ChatTransport.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin.git", from: "1.4.0"),
    ],
    targets: [
        .target(
            name: "ChatDomain",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // hiredis' pkg-config file adds -D_FILE_OFFSET_BITS=64, which SwiftPM refuses with a warning; the header
        // lives under /usr/include/hiredis and the module map links the library, so pkg-config is not needed.
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // What the adapters share (they may not import each other): threads of their own for a C client's
        // blocking calls, and the reconnect backoff.
        .target(
            name: "ChatAdapterSupport",
            dependencies: [
                "ChatDomain",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "ChatPresenceRedis",
            dependencies: [
                "ChatAdapterSupport",
                "ChatDomain",
                "CHiredis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // The Socket.IO front door: Engine.IO v4 / Socket.IO v5 over Hummingbird, JWT authentication.
        .target(
            name: "ChatTransport",
            dependencies: [
                "ChatDomain",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        .target(
            name: "ChatBrokerAMQP",
            dependencies: [
                "ChatAdapterSupport",
                "ChatDomain",
                "CRabbitMQ",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .systemLibrary(
            name: "CMongoc",
            pkgConfig: "libmongoc-1.0",
            providers: [.apt(["libmongoc-dev"])]
        ),
        .target(
            name: "ChatStoreMongo",
            dependencies: [
                "ChatAdapterSupport",
                "ChatDomain",
                "CMongoc",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .systemLibrary(
            name: "CSQLite",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        .target(
            name: "ChatStoreSQLite",
            dependencies: [
                "ChatAdapterSupport",
                "ChatDomain",
                "CSQLite",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // Encryption at rest: AES-256-GCM sealing of message content (the domain's MessageSealer port).
        .target(
            name: "ChatEncryption",
            dependencies: [
                "ChatDomain",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        // The receipts webhook: posts what waits in a ReceiptOutbox, signed, at least once.
        .target(
            name: "ChatWebhook",
            dependencies: [
                "ChatDomain",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // The server: configuration, wiring and lifecycle only.
        // chatd as a library: settings, the adapter table, the wiring and the Hummingbird application.
        .target(
            name: "ChatServer",
            dependencies: [
                "ChatDomain",
                "ChatTransport",
                "ChatPresenceRedis",
                "ChatStoreMongo",
                "ChatStoreSQLite",
                "ChatBrokerAMQP",
                "ChatEncryption",
                "ChatWebhook",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // The command line: flags and environment into settings, then build and run.
        .executableTarget(
            name: "chatd",
            dependencies: [
                "ChatDomain",
                "ChatServer",
                "ChatTransport",
                "ChatBrokerAMQP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // Benchmarks: run with the scripts in scripts/ (they start the servers and build in release mode).
        .executableTarget(
            name: "redis-presence-benchmark",
            dependencies: [
                "ChatDomain",
                "ChatPresenceRedis",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/RedisPresenceBenchmark",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "amqp-queue-benchmark",
            dependencies: [
                "ChatDomain",
                "ChatBrokerAMQP",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/AMQPQueueBenchmark",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "mongo-store-benchmark",
            dependencies: [
                "ChatDomain",
                "ChatStoreMongo",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/MongoStoreBenchmark",
            swiftSettings: strictSettings
        ),
        // Test support shared by the test targets: the engine harness and the product scenarios, run against
        // each adapter.
        .target(
            name: "ChatScenarioKit",
            dependencies: [
                "ChatDomain",
                "ChatPresenceRedis",
                "ChatStoreMongo",
                "ChatBrokerAMQP",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Tests/ChatScenarioKit",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatDomainTests",
            dependencies: ["ChatDomain", "ChatScenarioKit"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatTransportTests",
            dependencies: [
                "ChatTransport",
                "ChatDomain",
                "ChatScenarioKit",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["Interop", "FuzzCorpus"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatBrokerAMQPTests",
            dependencies: ["ChatBrokerAMQP", "ChatDomain", "ChatScenarioKit", "CRabbitMQ"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatStoreMongoTests",
            dependencies: ["ChatStoreMongo", "ChatDomain", "ChatScenarioKit"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatStoreSQLiteTests",
            dependencies: ["ChatStoreSQLite", "ChatDomain", "ChatScenarioKit", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatEncryptionTests",
            dependencies: ["ChatEncryption", "ChatDomain", "ChatScenarioKit", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatWebhookTests",
            dependencies: [
                "ChatWebhook",
                "ChatDomain",
                "ChatScenarioKit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        // End to end: a real chatd process, real RabbitMQ, Redis and MongoDB-wire servers, real python-socketio
        // clients (the interop script of ChatTransportTests).
        .testTarget(
            name: "ChatdEndToEndTests",
            dependencies: [
                "ChatDomain",
                "ChatTransport",
                "ChatScenarioKit",
                "ChatStoreMongo",
                "ChatBrokerAMQP",
                "ChatPresenceRedis",
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Clients"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatAdapterSupportTests",
            dependencies: ["ChatAdapterSupport", "ChatDomain"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatServerTests",
            dependencies: [
                "ChatServer",
                "ChatDomain",
                "ChatTransport",
                "ChatPresenceRedis",
                "ChatStoreSQLite",
                "ChatBrokerAMQP",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ChatPresenceRedisTests",
            dependencies: ["ChatPresenceRedis", "ChatDomain", "ChatScenarioKit"],
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
