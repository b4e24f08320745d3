public import ChatStoreMongo
import Foundation
import Logging
import Testing

/// An nx-27017 server (a MongoDB wire-protocol server on SQLite, from PyPI) of the test's own on a loopback port,
/// in memory; or, when `MONGODB_URI` is set, that server instead (a real mongod), with a database per test.
public final class MongoTestServer: OwnedTestServer, @unchecked Sendable {
    // Mutable state is only touched by the one test that owns the server, one call at a time.
    public let uri: String
    public let database = "chatd_test_\(UUID().uuidString.prefix(8).lowercased())"
    /// Whether this test started the server (and so can stop and restart it).
    public let isOwn: Bool
    private let port: Int
    private let binary: String
    private let directory: URL
    /// Whether the server keeps its data in a file (so a restart keeps it) instead of memory.
    private var persistent = false
    private var process: Process?
    private var stores: [MongoMessageStore] = []

    private init(uri: String, isOwn: Bool, port: Int, binary: String, directory: URL) {
        self.uri = uri
        self.isOwn = isOwn
        self.port = port
        self.binary = binary
        self.directory = directory
    }

    /// The nx-27017 that `./scripts/test.sh` installs into `.venv`, or `NX_27017`.
    private static var binary: String? {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["NX_27017"], FileManager.default.isExecutableFile(atPath: path) { return path }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent(".venv/bin/nx-27017").path
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }

    /// Starts a server; nil only when none is available and this is not CI.
    /// With `persistent`, the data lives in a file of the test's own and survives ``restart()``.
    public static func start(persistent: Bool = false) async throws -> MongoTestServer? {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("chatd-mongo-\(UUID().uuidString)")
        if let uri = ProcessInfo.processInfo.environment["MONGODB_URI"] {
            return MongoTestServer(uri: uri, isOwn: false, port: 0, binary: "", directory: directory)
        }
        guard let binary = Self.binary else {
            _ = try TestServers.missing("nx-27017 is not installed; ./scripts/test.sh installs it into .venv (or set MONGODB_URI)")
            return nil
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for _ in 0..<5 {
            let port = TestServers.freePort()
            let server = MongoTestServer(uri: "mongodb://127.0.0.1:\(port)", isOwn: true, port: port, binary: binary, directory: directory)
            server.persistent = persistent
            if try await server.launch() { return server }
        }
        throw TestServerError("nx-27017 did not start on any of five random ports")
    }

    /// A store on this server, in this test's database; closed when the test ends.
    public func makeStore(_ configure: (inout MongoStoreConfiguration) -> Void = { _ in }) throws -> MongoMessageStore {
        var configuration = MongoStoreConfiguration(uri: self.uri)
        configuration.database = self.database
        configuration.serverSelectionTimeout = .milliseconds(1500)
        configure(&configuration)
        let store = try MongoMessageStore(configuration: configuration, logger: Logger(label: "mongo"))
        self.stores.append(store)
        return store
    }

    /// Starts the process and waits (at most 15 s) until a real `ping` over the wire succeeds; false if it exited.
    private func launch() async throws -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: self.binary)
        process.arguments = [
            "--host", "127.0.0.1", "-p", "\(self.port)", "--db", self.persistent ? self.directory.appendingPathComponent("nx-\(self.port).db").path : "memory",
            "--log-file", self.directory.appendingPathComponent("nx-\(self.port).log").path,
            "--pid-file", self.directory.appendingPathComponent("nx-\(self.port).pid").path,
        ]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        var configuration = MongoStoreConfiguration(uri: self.uri)
        configuration.serverSelectionTimeout = .milliseconds(200)
        configuration.threads = 1
        let probe = try MongoMessageStore(configuration: configuration, logger: Logger(label: "probe"))
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            if TestServers.hasExited(process.processIdentifier) {
                await probe.close()
                return false
            }
            if (try? await probe.ping()) != nil {
                await probe.close()
                return true
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        await probe.close()
        await self.stop()
        throw TestServerError("nx-27017 on port \(self.port) did not answer ping within 15 s")
    }


    /// Stops the server (in memory it keeps nothing) and waits until its port is closed.
    public func stop() async {
        guard let process else { return }
        let pid = process.processIdentifier
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(5)
        while !TestServers.hasExited(pid), ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if !TestServers.hasExited(pid) { kill(pid, SIGKILL) }
        self.process = nil
    }

    /// Starts the server again on the same port.
    public func restart() async throws {
        await self.stop()
        guard try await self.launch() else { throw TestServerError("nx-27017 could not restart on port \(self.port)") }
    }

    public func shutDown() async {
        for store in self.stores { await store.close() }
        self.stores = []
        await self.stop()
        try? FileManager.default.removeItem(at: self.directory)
    }
}

/// Runs `body` with a MongoDB-compatible server, then closes the stores and stops the server, whatever happened.
public func withMongoServer(persistent: Bool = false, _ body: (MongoTestServer) async throws -> Void) async throws {
    try await withTestServer({ try await MongoTestServer.start(persistent: persistent) }, body)
}

