// swift-tools-version:6.1
// chatd's performance suite, a package of its own so that it never slows the main build:
//   - `chatd-load`: a native Socket.IO load generator (scenarios latency, throughput, drain, connections);
//   - `ChatMicro`: micro-benchmarks (ordo-one/benchmark) of the codec, message JSON and the delivery engine;
//   - `chatd-instructions`: one hot-path operation N times, for instruction counts under valgrind.
// Run everything with ./scripts/bench.sh from the repository root.
import PackageDescription

let package = Package(
    name: "chatd-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        // The repository itself, through a link that scripts/bench.sh makes (a path package is named after its
        // directory, and a clone may have any name).
        .package(path: ".deps/chatd"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/hummingbird-project/swift-websocket.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
    ],
    targets: [
        .executableTarget(
            name: "chatd-load",
            dependencies: [
                .product(name: "ChatDomain", package: "chatd"),
                .product(name: "ChatTransport", package: "chatd"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .executableTarget(
            name: "chatd-instructions",
            dependencies: [
                .product(name: "ChatDomain", package: "chatd"),
                .product(name: "ChatEncryption", package: "chatd"),
                .product(name: "ChatTransport", package: "chatd"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ChatMicro",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "ChatDomain", package: "chatd"),
                .product(name: "ChatTransport", package: "chatd"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/ChatMicro",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
