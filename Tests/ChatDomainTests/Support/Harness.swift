import ChatDomain
import Foundation
import Logging
import Synchronization
import Testing

/// A log handler that keeps what was logged, so tests assert on the lines an operator would read.
final class LogCapture: Sendable {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    private let entries = Mutex<[Entry]>([])

    var all: [Entry] { self.entries.withLock { $0 } }

    func count(of message: String) -> Int {
        self.all.count { $0.message == message }
    }

    func contains(_ message: String, level: Logger.Level? = nil) -> Bool {
        self.all.contains { $0.message == message && (level == nil || $0.level == level) }
    }

    func logger(label: String = "chatd.test") -> Logger {
        var logger = Logger(label: label) { _ in Handler(capture: self) }
        logger.logLevel = .trace
        return logger
    }

    fileprivate func append(_ entry: Entry) {
        self.entries.withLock { $0.append(entry) }
        // `scripts/run.sh` sets this to show the engine's log lines while the demo scenario runs.
        if ProcessInfo.processInfo.environment["CHATD_TEST_LOG"] != nil {
            let metadata = entry.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            print("[\(entry.level)] \(entry.message) \(metadata)")
        }
    }

    private struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var merged = self.metadata
            for (key, value) in event.metadata ?? [:] { merged[key] = value }
            self.capture.append(
                Entry(level: event.level, message: event.message.description, metadata: merged.mapValues { "\($0)" })
            )
        }
    }
}

/// The engine on in-memory adapters, with a controllable clock and captured logs.
struct Harness: Sendable {
    static let alice = User(id: "alice", username: "Alice")
    static let bob = User(id: "bob", username: "Bob")
    static let carol = User(id: "carol", username: "Carol")
    static let dave = User(id: "dave", username: "Dave")
    static let directChat: ChatID = "chat-ab"
    static let groupChat: ChatID = "chat-abcd"

    let clock = ManualWallClock()
    let store = InMemoryMessageStore()
    let queue: InMemoryMessageQueue
    let presence: InMemoryPresenceStore
    let transport = InMemoryTransport()
    let logs = LogCapture()
    let service: ChatService

    init(
        configuration: ChatServiceConfiguration = .init(),
        queueConfiguration: InMemoryMessageQueue.Configuration = .init()
    ) throws {
        self.queue = InMemoryMessageQueue(configuration: queueConfiguration, clock: self.clock)
        self.presence = InMemoryPresenceStore(clock: self.clock)
        self.service = try ChatService(
            configuration: configuration,
            dependencies: .init(
                store: self.store,
                queue: self.queue,
                presence: self.presence,
                transport: self.transport,
                wallClock: self.clock
            ),
            logger: self.logs.logger()
        )
    }

    /// Creates the standard users and chats: alice–bob, and a group of alice, bob, carol and dave.
    func seed() async throws {
        for user in [Self.alice, Self.bob, Self.carol, Self.dave] { try await self.store.saveUser(user) }
        try await self.store.saveChat(Chat(id: Self.directChat, participants: [Self.alice.id, Self.bob.id]))
        try await self.store.saveChat(
            Chat(id: Self.groupChat, participants: [Self.alice.id, Self.bob.id, Self.carol.id, Self.dave.id])
        )
    }

    /// Opens a connection for `user` on the transport and tells the engine.
    @discardableResult
    func connect(
        _ user: User,
        as connection: ConnectionID? = nil,
        behavior: @escaping InMemoryTransport.Behavior = { _ in .acknowledge }
    ) async -> ConnectionID {
        let id = connection ?? ConnectionID("\(user.id)-\(UUID().uuidString.prefix(8))")
        self.transport.open(id, behavior: behavior)
        await self.service.connect(id, user: user)
        return id
    }

    /// The client's network goes away.
    func drop(_ connection: ConnectionID) async {
        self.transport.drop(connection)
        await self.service.disconnect(connection)
    }

    /// Sends `content` and expects it accepted.
    @discardableResult
    func send(
        _ content: String,
        in chat: ChatID = Harness.directChat,
        from connection: ConnectionID,
        clientMessageID: String? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> MessageSent {
        let result = await self.service.send(
            SendMessageRequest(chatID: chat, content: content, clientMessageID: clientMessageID),
            from: connection
        )
        return try #require(try? result.get(), "send of '\(content)' failed: \(result)", sourceLocation: sourceLocation)
    }

    func depth(of user: User) async throws -> Int {
        try await self.queue.depth(for: user.id).total
    }

    func contents(of connection: ConnectionID) -> [String] {
        self.transport.receivedMessages(of: connection).map(\.message.content)
    }
}

/// Runs `body` with a seeded harness whose engine is running; stops the engine afterwards.
func withHarness(
    configuration: ChatServiceConfiguration = .init(),
    queueConfiguration: InMemoryMessageQueue.Configuration = .init(),
    _ body: @Sendable (Harness) async throws -> Void
) async throws {
    let harness = try Harness(configuration: configuration, queueConfiguration: queueConfiguration)
    try await harness.seed()
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await harness.service.run() }
        defer { group.cancelAll() }
        try await body(harness)
    }
}

/// Polls `condition` until it holds or `timeout` passed; the engine confirms and records deliveries in the
/// background, so some effects land a moment after the call that caused them.
func eventually(
    _ description: String,
    timeout: Duration = .seconds(5),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: @Sendable () async throws -> Bool
) async rethrows {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try? await Task.sleep(for: .milliseconds(2))
    }
    Issue.record("timed out waiting until \(description)", sourceLocation: sourceLocation)
}

/// A value shared between test tasks.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) { self.mutex = Mutex(value) }

    var value: Value { self.mutex.withLock { $0 } }

    func withLock<Result: Sendable>(_ body: (inout Value) -> Result) -> Result {
        self.mutex.withLock { body(&$0) }
    }
}

extension Result where Failure == ChatError {
    /// The error code of a failure, nil for a success.
    var errorCode: ChatError.Code? {
        if case .failure(let error) = self { error.code } else { nil }
    }
}
