public import ChatPresenceRedis
import Foundation
import Logging
import Testing

/// Runs `body` with a fresh redis-server, then closes every store made with ``RedisTestServer/makeStore(_:)`` and
/// stops the server, whatever happened. Without redis-server it fails in CI and, run by hand, says why and returns.
public func withRedisServer(
    password: String? = nil,
    _ body: (RedisTestServer) async throws -> Void
) async throws {
    try await withTestServer({ try await RedisTestServer.start(password: password) }, body)
}

/// A redis-server of the test's own on a free loopback port, with no persistence, in a temporary directory.
///
/// When `redis-server` is not installed the tests fail in CI (`CI` set) and, run by hand, say why and stop early.
public final class RedisTestServer: OwnedTestServer, @unchecked Sendable {
    // Mutable state is only touched by the one test that owns the server, one call at a time.
    public let port: Int
    public let password: String?
    private let directory: URL
    private var process: Process?
    private var stores: [RedisPresenceStore] = []

    private init(port: Int, password: String?, directory: URL) {
        self.port = port
        self.password = password
        self.directory = directory
    }

    /// Starts a server; nil only when redis-server is missing and this is not CI.
    public static func start(password: String? = nil) async throws -> RedisTestServer? {
        guard let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].first(where: FileManager.default.isExecutableFile)
        else {
            _ = try TestServers.missing("redis-server is not installed; ./scripts/test.sh installs it (apt package redis-server)")
            return nil
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("chatd-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for _ in 0..<5 {
            let server = RedisTestServer(port: TestServers.freePort(), password: password, directory: directory)
            server.binary = binary
            if try await server.launch() { return server }
        }
        throw TestServerError("redis-server did not start on any of five random ports")
    }

    private var binary = ""

    /// Starts the process and waits (at most 5 s) until it answers PING; false if it exited (port taken).
    private func launch() async throws -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: self.binary)
        var arguments = [
            "--port", "\(self.port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self.directory.path, "--logfile", self.directory.appendingPathComponent("redis-\(self.port).log").path,
        ]
        if let password { arguments += ["--requirepass", password] }
        process.arguments = arguments
        // The server must not inherit the test's output pipes, or whoever reads them waits for it forever.
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        // 15 s: redis-server itself answers within milliseconds, but each PING here is a redis-cli process, and in a
        // full parallel run on two cores starting processes can take seconds (5 s was not always enough).
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            if TestServers.hasExited(process.processIdentifier) {
                self.process = nil
                return false
            }
            // The server on the port must be this process: a random port may already hold another test's server,
            // which would answer while this one fails to bind and exits.
            if (try? await self.cli("PING")) == "PONG" {
                if (try? await self.cli("INFO", "server"))?.contains("process_id:\(process.processIdentifier)") == true { return true }
                await self.kill()
                return false
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        await self.kill()
        throw TestServerError("redis-server on port \(self.port) did not answer PING within 15 s")
    }

    /// Kills the process and reaps it. SIGKILL, since a child can inherit a signal mask that blocks SIGTERM (it
    /// did: servers that ignored `terminate()` outlived their tests).
    private func kill() async {
        guard let process else { return }
        await TestServers.stopTree(process.processIdentifier)
        self.process = nil
    }

    /// Stops the server (its data is gone: it persists nothing) and waits, at most 5 s, until it no longer answers.
    public func stop() async {
        guard self.process != nil else { return }
        _ = try? await self.cli("SHUTDOWN", "NOSAVE")
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline, (try? await self.cli("PING")) == "PONG" {
            try? await Task.sleep(for: .milliseconds(10))
        }
        // Reaped, and killed if SHUTDOWN did not end it.
        await self.kill()
    }

    /// A presence store on this server; closed when the test ends.
    public func makeStore(_ configure: (inout RedisPresenceConfiguration) -> Void = { _ in }, label: String = "redis") -> RedisPresenceStore {
        var configuration = RedisPresenceConfiguration(host: "127.0.0.1", port: self.port)
        configuration.password = self.password
        configuration.reconnectBackoff.maximum = .milliseconds(200)
        configure(&configuration)
        let store = RedisPresenceStore(configuration: configuration, logger: Logger(label: label))
        self.stores.append(store)
        return store
    }

    /// Closes the stores and stops the server.
    public func shutDown() async {
        for store in self.stores { await store.close() }
        self.stores = []
        await self.stop()
        try? FileManager.default.removeItem(at: self.directory)
    }

    /// Starts the server again on the same port.
    public func restart() async throws {
        await self.stop()
        guard try await self.launch() else { throw TestServerError("redis-server could not restart on port \(self.port)") }
    }

    /// Runs one command through redis-cli and returns its output, trimmed; waits on a thread of its own.
    public func cli(_ arguments: String...) async throws -> String {
        var all = ["-p", "\(self.port)", "--no-auth-warning"]
        if let password { all += ["-a", password] }
        all += arguments
        return try await TestServers.offPool { [all] in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-cli")
            process.arguments = all
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = Pipe()
            try process.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }

    /// How many times Redis ran `command` (from INFO commandstats).
    public func calls(of command: String) async throws -> Int {
        let info = try await self.cli("INFO", "commandstats")
        guard let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("cmdstat_\(command):") }),
            let field = line.split(separator: ",").first(where: { $0.contains("calls=") }),
            let value = Int(field.split(separator: "=").last ?? "")
        else { return 0 }
        return value
    }

}

