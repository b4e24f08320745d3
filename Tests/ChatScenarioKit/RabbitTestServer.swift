public import ChatBrokerAMQP
import Foundation
import Logging
public import Testing

/// A RabbitMQ node of the test's own on loopback ports, with its data in a temporary directory.
///
/// Without rabbitmq-server installed the tests fail in CI (`CI` set) and, run by hand, say why and return early.
public final class RabbitTestServer: OwnedTestServer, @unchecked Sendable {
    // `process` and `portMapper` are only touched by the one test that owns the server, one call at a time; what
    // tests sharing a node reach is behind `lock`.
    public let port: Int
    private let directory: URL
    private var process: Process?
    /// The node's own Erlang port mapper, so no shared `epmd` daemon outlives the tests.
    private var portMapper: Process?
    private var queues: [RabbitMQMessageQueue] = []
    private var handedOutVirtualHosts = 0
    /// Guards `queues` and `handedOutVirtualHosts`, which the tests sharing a node reach.
    private let lock = NSLock()

    private var nodeName: String { "chatd-test-\(self.port)@localhost" }

    private init(port: Int, directory: URL) {
        self.port = port
        self.directory = directory
    }

    public static let binary = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    /// Starts a node; nil only when RabbitMQ is missing and this is not CI. A node that cannot boot (its ports
    /// taken between the check and its start, or no AMQP within the bound) is stopped, its log printed, and another
    /// started on other ports, at most three times.
    public static func start() async throws -> RabbitTestServer? {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            _ = try TestServers.missing("rabbitmq-server is not installed; ./scripts/test.sh installs it (apt package rabbitmq-server)")
            return nil
        }
        var failures: [String] = []
        for _ in 1...3 {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("chatd-rabbit-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let server = RabbitTestServer(port: try Self.freePorts(), directory: directory)
            do {
                try await server.launch()
                return server
            } catch {
                failures.append("\(error)")
                print("RabbitMQ test node did not boot, trying other ports: \(error)")
                await server.shutDown()
            }
        }
        throw TestServerError("no RabbitMQ test node booted in three attempts: \(failures.joined(separator: "; "))")
    }

    /// A port for AMQP whose next two (the node's distribution port and its `epmd`) are free too, all below the
    /// kernel's ephemeral range, where the thousands of connections other suites make leave ports in TIME_WAIT.
    private static func freePorts() throws -> Int {
        let end = min(TestServers.ephemeralPortsStart, 65_536) - 3
        guard end > 20_000 else { throw TestServerError("no port range below the ephemeral ports (\(end + 3)) for RabbitMQ") }
        for _ in 0..<100 {
            let port = Int.random(in: 20_000..<end)
            if (0..<3).allSatisfy({ TestServers.isFree(port: port + $0) }) { return port }
        }
        throw TestServerError("no three free consecutive loopback ports between 20000 and \(end + 3) for RabbitMQ")
    }

    /// A queue adapter on this node; closed when the node is shut down.
    public func makeQueue(_ configure: (inout AMQPQueueConfiguration) -> Void = { _ in }) -> RabbitMQMessageQueue {
        var configuration = AMQPQueueConfiguration(host: "127.0.0.1", port: self.port)
        configuration.reconnectBackoff.maximum = .milliseconds(200)
        configure(&configuration)
        let queue = RabbitMQMessageQueue(configuration: configuration, logger: Logger(label: "amqp"))
        self.lock.withLock { self.queues.append(queue) }
        return queue
    }

    /// The virtual hosts every node has besides `/`, so that tests sharing a node do not see each other's queues.
    public static let isolatedVirtualHosts = (1...16).map { "isolated-\($0)" }

    /// A virtual host of this node that no other caller got (queues, exchanges and dead letters are per virtual
    /// host). Throws once all of ``isolatedVirtualHosts`` are handed out.
    public func isolatedVirtualHost() throws -> String {
        try self.lock.withLock {
            guard self.handedOutVirtualHosts < Self.isolatedVirtualHosts.count else {
                throw TestServerError("all \(Self.isolatedVirtualHosts.count) isolated virtual hosts of the shared node are in use; add more")
            }
            defer { self.handedOutVirtualHosts += 1 }
            return Self.isolatedVirtualHosts[self.handedOutVirtualHosts]
        }
    }

    /// Writes the node's configuration: its definitions (loaded at boot) hold the default `guest` user, `/` and
    /// the isolated virtual hosts, with full permissions on each. A node that loads definitions does not seed the
    /// default user, hence `guest` here, with its password hashed as RabbitMQ does (SHA-256 of a 4-byte salt, here
    /// zeros, followed by the password; base64 of salt and digest).
    private func writeConfiguration() throws {
        let hosts = ["/"] + Self.isolatedVirtualHosts
        let definitions: [String: Any] = [
            "users": [[
                "name": "guest", "password_hash": "AAAAAPEoQ8a3jY6DABRiJzkoKooQbXiBp2iGLke7d+FVKzJx",
                "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"],
            ]],
            "vhosts": hosts.map { ["name": $0] },
            "permissions": hosts.map { ["user": "guest", "vhost": $0, "configure": ".*", "write": ".*", "read": ".*"] },
        ]
        let definitionsFile = self.directory.appendingPathComponent("definitions.json")
        try JSONSerialization.data(withJSONObject: definitions).write(to: definitionsFile)
        let configuration = "definitions.import_backend = local_filesystem\ndefinitions.local.path = \(definitionsFile.path)\n"
        try Data(configuration.utf8).write(to: self.directory.appendingPathComponent("rabbitmq.conf"))
    }

    private var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["HOME"] = self.directory.path
        environment["RABBITMQ_NODENAME"] = self.nodeName
        environment["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1"
        environment["RABBITMQ_NODE_PORT"] = "\(self.port)"
        environment["RABBITMQ_DIST_PORT"] = "\(self.port + 1)"
        environment["RABBITMQ_MNESIA_BASE"] = self.directory.appendingPathComponent("mnesia").path
        environment["RABBITMQ_LOG_BASE"] = self.directory.appendingPathComponent("log").path
        environment["RABBITMQ_PID_FILE"] = self.directory.appendingPathComponent("rabbit.pid").path
        // A crashing node writes its dump here, inside its own temporary directory, never into the work tree.
        environment["ERL_CRASH_DUMP"] = self.directory.appendingPathComponent("erl_crash.dump").path
        environment["RABBITMQ_ENABLED_PLUGINS_FILE"] = self.directory.appendingPathComponent("plugins").path
        environment["RABBITMQ_CONFIG_FILE"] = self.directory.appendingPathComponent("rabbitmq").path
        // The node registers with the port mapper this server started (a child of the test process), instead of
        // daemonizing one on 4369 that nobody stops.
        environment["ERL_EPMD_PORT"] = "\(self.portMapperPort)"
        return environment
    }

    private var portMapperPort: Int { self.port + 2 }

    /// Starts the node's own `epmd` in the foreground, as a child of the test process.
    private func startPortMapper() throws {
        guard self.portMapper == nil else { return }
        let epmd = Process()
        epmd.executableURL = URL(fileURLWithPath: "/usr/bin/epmd")
        epmd.arguments = ["-port", "\(self.portMapperPort)", "-address", "127.0.0.1"]
        epmd.standardInput = FileHandle.nullDevice
        epmd.standardOutput = FileHandle.nullDevice
        epmd.standardError = FileHandle.nullDevice
        try epmd.run()
        self.portMapper = epmd
    }

    /// Starts the node and waits (at most 60 s) until it accepts AMQP and a queue adapter can use it.
    private func launch() async throws {
        try self.startPortMapper()
        try self.writeConfiguration()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.environment = self.environment
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        var configuration = AMQPQueueConfiguration(host: "127.0.0.1", port: self.port)
        configuration.reconnectBackoff = .init(initial: .milliseconds(1), maximum: .milliseconds(1))
        let probe = RabbitMQMessageQueue(configuration: configuration, logger: Logger(label: "probe"))
        let deadline = ContinuousClock.now + .seconds(60)
        var failure = "did not accept AMQP within 60 s"
        while ContinuousClock.now < deadline {
            if (try? await probe.deadLetterDepth()) != nil {
                await probe.close()
                return
            }
            if let portMapper, TestServers.hasExited(portMapper.processIdentifier) {
                failure = "its epmd on port \(self.portMapperPort) exited (port taken?)"
                self.portMapper = nil
                break
            }
            if TestServers.hasExited(process.processIdentifier) {
                failure = "exited before accepting AMQP"
                self.process = nil
                break
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        await probe.close()
        await self.stop()
        throw TestServerError("RabbitMQ on port \(self.port) \(failure); its log ends with:\n\(self.logTail())")
    }

    /// The last lines of the node's own log, for a node that did not boot.
    private func logTail(lines: Int = 30) -> String {
        let logs = self.directory.appendingPathComponent("log")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: logs.path)) ?? []
        let text = files.filter { $0.hasSuffix(".log") }.sorted().compactMap { name in
            try? String(contentsOf: logs.appendingPathComponent(name), encoding: .utf8)
        }.joined(separator: "\n")
        let tail = text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines)
        return tail.isEmpty ? "(no log written)" : tail.joined(separator: "\n")
    }

    /// Kills the node, as a crash would (its durable queues stay on disk: a confirmed persistent message must
    /// survive this harsher stop too; a graceful `rabbitmqctl shutdown` takes about 30 s here). The launcher is a
    /// shell whose child is the Erlang VM: the whole tree is stopped by process id, and reaped.
    public func stop() async {
        guard let process else { return }
        await TestServers.stopTree(process.processIdentifier)
        self.process = nil
    }

    /// Starts the node again with the same data.
    public func restart() async throws {
        await self.stop()
        try await self.launch()
    }

    public func shutDown() async {
        let queues = self.lock.withLock {
            defer { self.queues = [] }
            return self.queues
        }
        for queue in queues { await queue.close() }
        await self.stop()
        if let portMapper {
            await TestServers.stopTree(portMapper.processIdentifier)
            self.portMapper = nil
        }
        try? FileManager.default.removeItem(at: self.directory)
    }

}

/// Runs `body` with a RabbitMQ node of its own, then closes the adapters and stops the node, whatever happened.
public func withRabbitServer(_ body: (RabbitTestServer) async throws -> Void) async throws {
    try await withTestServer({ try await RabbitTestServer.start() }, body)
}


/// A suite trait: one RabbitMQ node for every test of the suite, booted before the first and stopped after the last
/// (a boot takes a core for 7–15 s). Tests reach it as ``SharedRabbitNode/current`` and keep apart by taking a
/// virtual host each (``RabbitTestServer/isolatedVirtualHost()``); a test that stops or restarts its broker needs a
/// node of its own (``withRabbitServer(_:)``).
public struct SharedRabbitNode: SuiteTrait, TestScoping {
    /// What a suite with this trait provides to its tests.
    public struct Scope: Sendable {
        /// The suite's node; nil when RabbitMQ is missing and this is not CI (the skip was printed).
        public let server: RabbitTestServer?
    }

    /// The scope of the suite being run; nil outside a suite with this trait.
    @TaskLocal public static var current: Scope?

    public var isRecursive: Bool { false }

    public func provideScope(
        for test: Test,
        testCase: Test.Case?,
        performing function: @Sendable () async throws -> Void
    ) async throws {
        guard let server = try await RabbitTestServer.start() else {
            try await Self.$current.withValue(Scope(server: nil)) { try await function() }
            return
        }
        do {
            try await Self.$current.withValue(Scope(server: server)) { try await function() }
        } catch {
            await server.shutDown()
            throw error
        }
        await server.shutDown()
    }
}

extension Trait where Self == SharedRabbitNode {
    /// One RabbitMQ node for the whole suite; see ``SharedRabbitNode``.
    public static var sharedRabbitNode: Self { SharedRabbitNode() }
}

/// A virtual host of its own on the suite's shared node, for one test.
public struct IsolatedRabbitHost: Sendable {
    public let server: RabbitTestServer
    public let virtualHost: String

    /// A queue adapter in this virtual host; closed when the node is shut down.
    public func makeQueue(_ configure: (inout AMQPQueueConfiguration) -> Void = { _ in }) -> RabbitMQMessageQueue {
        self.server.makeQueue {
            $0.virtualHost = self.virtualHost
            configure(&$0)
        }
    }
}

/// Runs `body` with a virtual host of its own on the suite's shared node (``SharedRabbitNode``); returns at once
/// when RabbitMQ is missing and this is not CI.
public func withIsolatedRabbitHost(_ body: (IsolatedRabbitHost) async throws -> Void) async throws {
    guard let scope = SharedRabbitNode.current else {
        throw TestServerError("no shared RabbitMQ node here: give the suite the .sharedRabbitNode trait")
    }
    guard let server = scope.server else { return }
    try await body(IsolatedRabbitHost(server: server, virtualHost: try server.isolatedVirtualHost()))
}
