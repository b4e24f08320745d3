import ChatDomain
import ChatScenarioKit
import ChatTransport
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import ServiceLifecycle
import Testing

/// A Socket.IO server on loopback (a random port), on the engine with in-memory adapters and the standard users
/// and chats, for clients in other processes to talk to.
struct LiveServer: Sendable {
    static let secret = "interop-test-secret-0123456789-abcdef"

    let port: Int
    let server: SocketIOServer
    let service: ChatService
    let store: InMemoryMessageStore
    let queue: InMemoryMessageQueue
    let authenticator: TokenAuthenticator
    let logs: LogCapture

    var url: String { "http://127.0.0.1:\(self.port)" }

    /// A valid token for `user`.
    func token(_ user: User, lifetime: Duration = .seconds(3600)) async throws -> String {
        try await self.authenticator.token(for: user, lifetime: lifetime)
    }

    /// Tokens for the four standard users, by id.
    func tokens() async throws -> [String: String] {
        var tokens: [String: String] = [:]
        for user in [Harness.alice, Harness.bob, Harness.carol, Harness.dave] {
            tokens[user.id.rawValue] = try await self.token(user)
        }
        return tokens
    }
}

/// Runs `body` against a live server; stops it afterwards.
func withLiveServer(
    socketIO: SocketIOConfiguration = SocketIOConfiguration(),
    chat: ChatServiceConfiguration = ChatServiceConfiguration(),
    clock: any MonotonicClock = SystemMonotonicClock(),
    _ body: @Sendable (LiveServer) async throws -> Void
) async throws {
    let logs = LogCapture()
    let logger = logs.logger(label: "chatd.transport.test")
    let authenticator = try await TokenAuthenticator(secret: LiveServer.secret)
    let wallClock = SystemWallClock()
    let store = InMemoryMessageStore()
    let queue = InMemoryMessageQueue(configuration: .init(), clock: wallClock)
    let server = try SocketIOServer(configuration: socketIO, authenticator: authenticator, logger: logger, clock: clock) { transport in
        try ChatService(
            configuration: chat,
            dependencies: .init(
                store: store,
                queue: queue,
                presence: InMemoryPresenceStore(clock: wallClock),
                transport: transport,
                wallClock: wallClock
            ),
            logger: logger
        )
    }
    let service = server.chatService
    for user in [Harness.alice, Harness.bob, Harness.carol, Harness.dave] { try await store.saveUser(user) }
    try await store.saveChat(Chat(id: Harness.directChat, participants: [Harness.alice.id, Harness.bob.id]))
    try await store.saveChat(
        Chat(id: Harness.groupChat, participants: [Harness.alice.id, Harness.bob.id, Harness.carol.id, Harness.dave.id])
    )

    let router = Router(context: ChatRequestContext.self)
    server.addRoutes(to: router)
    ChatHTTPAPI(service: service, authenticator: authenticator, logger: logger).addRoutes(to: router)
    let port = Locked<Int?>(nil)
    let app = Application(
        router: router,
        server: server.httpServer(router: router),
        configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } },
        logger: logger
    )
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await service.run() }
        group.addTask { try await server.run() }
        group.addTask { try await app.run() }
        defer { group.cancelAll() }
        let deadline = ContinuousClock.now + .seconds(10)
        while port.value == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        guard let bound = port.value else { throw TestServerError("the test server did not start listening within 10 s") }
        try await body(
            LiveServer(port: bound, server: server, service: service, store: store, queue: queue, authenticator: authenticator, logs: logs)
        )
    }
}

/// The stock python-socketio client (installed in the repository's `.venv` by `scripts/test.sh`).
enum PythonClient {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let python = repository.appendingPathComponent(".venv/bin/python")
    static let script = repository.appendingPathComponent("Tests/ChatTransportTests/Interop/interop.py")

    struct Outcome: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
        /// Whether it finished with exit status 0.
        var succeeded: Bool { self.status == 0 }
        /// What to show when it failed.
        var report: String { "exit status \(self.status) (-2: killed after the time limit)\nstdout:\n\(self.stdout)\nstderr:\n\(self.stderr)" }
        /// The scenario's last stdout line, a JSON summary.
        var summary: [String: JSONValue] {
            guard let line = self.stdout.split(separator: "\n").last,
                case .object(let object)? = try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8))
            else { return [:] }
            return object
        }
    }

    /// Whether the client is installed; run by hand without it the caller skips (and says so), in CI it fails.
    static func available() async throws -> Bool {
        if FileManager.default.isExecutableFile(atPath: self.python.path), await self.check("import socketio, websocket, requests") {
            return true
        }
        return try TestServers.missing("python-socketio is not installed in .venv; run ./scripts/test.sh once") != nil
    }

    private static func check(_ code: String) async -> Bool {
        let python = self.python
        return (try? await TestServers.offPool {
            let process = Process()
            process.executableURL = python
            process.arguments = ["-c", code]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            return process.terminationStatus == 0
        }) == true
    }

    /// Runs one scenario of `interop.py` with `config` and waits for it (at most `timeout`).
    static func run(_ scenario: String, config: [String: JSONValue], timeout: Duration = .seconds(60)) async throws -> Outcome {
        var environment = ProcessInfo.processInfo.environment
        environment["INTEROP"] = String(decoding: try JSONEncoder().encode(JSONValue.object(config)), as: UTF8.self)
        environment["PYTHONUNBUFFERED"] = "1"
        environment["PYTHONDONTWRITEBYTECODE"] = "1"  // interop.py imports protocol_suite.py: no __pycache__ in the tree
        let child = try ChildProcess(self.python, arguments: [self.script.path, scenario], environment: environment, label: "interop")
        var status = await child.wait(timeout: timeout)
        if status == nil {
            child.signal(SIGKILL)
            status = -2
        }
        let outcome = Outcome(status: status ?? -2, stdout: child.stdout, stderr: child.stderr)
        await child.cleanUp()
        return outcome
    }
}
