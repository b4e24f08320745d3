public import ChatDomain
import Foundation
public import Logging
import ServiceLifecycle
import Synchronization
public import Testing

/// A log handler that keeps what was logged, so tests assert on the lines an operator would read.
public final class LogCapture: Sendable {
    public struct Entry: Sendable {
        public var level: Logger.Level
        public var message: String
        public var metadata: [String: String]
    }

    private let entries = Mutex<[Entry]>([])

    public init() {}

    public var all: [Entry] { self.entries.withLock { $0 } }

    public func count(of message: String) -> Int {
        self.all.count { $0.message == message }
    }

    public func contains(_ message: String, level: Logger.Level? = nil) -> Bool {
        self.all.contains { $0.message == message && (level == nil || $0.level == level) }
    }

    public func logger(label: String = "chatd.test") -> Logger {
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
public struct Harness: Sendable {
    public static let alice = User(id: "alice", username: "Alice")
    public static let bob = User(id: "bob", username: "Bob")
    public static let carol = User(id: "carol", username: "Carol")
    public static let dave = User(id: "dave", username: "Dave")
    public static let directChat: ChatID = "chat-ab"
    public static let groupChat: ChatID = "chat-abcd"

    public let clock: ManualWallClock
    /// The message store the engine uses: in-memory unless the harness was given another.
    public let store: any MessageStore
    /// The in-memory message store, when that is the one in use.
    public let memoryStore: InMemoryMessageStore?
    /// The offline queue the engine uses: in-memory unless the harness was given another.
    public let queue: any MessageQueue
    /// The in-memory queue, when that is the one in use.
    public let memoryQueue: InMemoryMessageQueue?
    /// The presence store the engine uses: in-memory unless the harness was given another.
    public let presence: any PresenceStore
    /// The in-memory presence store, when that is the one in use.
    public let memoryPresence: InMemoryPresenceStore?
    public let transport = InMemoryTransport()
    public let logs = LogCapture()
    public let service: ChatService

    /// Builds the engine on in-memory adapters, or on `presence`, `store` and `queue` when given.
    public init(
        configuration: ChatServiceConfiguration = .init(),
        queueConfiguration: InMemoryMessageQueue.Configuration = .init(),
        clock: ManualWallClock = ManualWallClock(),
        deadlines: any MonotonicClock = SystemMonotonicClock(),
        presence: (any PresenceStore)? = nil,
        store: (any MessageStore)? = nil,
        queue: (any MessageQueue)? = nil,
        relay: (any NodeRelay)? = nil,
        receiptOutbox: (any ReceiptOutbox)? = nil
    ) throws {
        self.clock = clock
        let memoryStore = store == nil ? InMemoryMessageStore() : nil
        self.memoryStore = memoryStore
        self.store = store ?? memoryStore!
        let memoryQueue = queue == nil ? InMemoryMessageQueue(configuration: queueConfiguration, clock: clock) : nil
        self.memoryQueue = memoryQueue
        self.queue = queue ?? memoryQueue!
        let memoryPresence = presence == nil ? InMemoryPresenceStore(clock: clock) : nil
        self.memoryPresence = memoryPresence
        self.presence = presence ?? memoryPresence!
        self.service = try ChatService(
            configuration: configuration,
            dependencies: .init(
                store: self.store,
                queue: self.queue,
                presence: self.presence,
                transport: self.transport,
                wallClock: self.clock,
                clock: deadlines,
                relay: relay,
                receiptOutbox: receiptOutbox
            ),
            logger: self.logs.logger()
        )
    }

    /// Creates the standard users and chats: alice–bob, and a group of alice, bob, carol and dave.
    public func seed() async throws {
        for user in [Self.alice, Self.bob, Self.carol, Self.dave] { try await self.store.saveUser(user) }
        try await self.store.saveChat(Chat(id: Self.directChat, participants: [Self.alice.id, Self.bob.id]))
        try await self.store.saveChat(
            Chat(id: Self.groupChat, participants: [Self.alice.id, Self.bob.id, Self.carol.id, Self.dave.id])
        )
    }

    /// Opens a connection for `user` on the transport and tells the engine.
    @discardableResult
    public func connect(
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
    public func drop(_ connection: ConnectionID) async {
        self.transport.drop(connection)
        await self.service.disconnect(connection)
    }

    /// Sends `content`, expects it accepted, and waits until its offline-queue writes (if any) landed, so the
    /// test sees the queue as the send left it.
    @discardableResult
    public func send(
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
        await self.service.offlineWritesSettled()
        return try #require(try? result.get(), "send of '\(content)' failed: \(result)", sourceLocation: sourceLocation)
    }

    /// The queue's depth for `user` once the engine's offline-queue writes so far have landed.
    public func depth(of user: User) async throws -> Int {
        await self.service.offlineWritesSettled()
        return try await self.queue.depth(for: user.id).total
    }

    /// The recipients a message is still on its way to, read through the store's receipts.
    public func pendingRecipients(of message: MessageID) async throws -> Set<UserID> {
        Set(try await self.store.receipts(for: message).filter { $0.status == .sent }.map(\.userID))
    }

    public func contents(of connection: ConnectionID) -> [String] {
        self.transport.receivedMessages(of: connection).map(\.message.content)
    }
}

/// Runs `body` with a seeded harness whose engine is running; stops the engine afterwards.
public func withHarness(
    configuration: ChatServiceConfiguration = .init(),
    queueConfiguration: InMemoryMessageQueue.Configuration = .init(),
    clock: ManualWallClock = ManualWallClock(),
    deadlines: any MonotonicClock = SystemMonotonicClock(),
    presence: (any PresenceStore)? = nil,
    store: (any MessageStore)? = nil,
    queue: (any MessageQueue)? = nil,
    relay: (any NodeRelay)? = nil,
    receiptOutbox: (any ReceiptOutbox)? = nil,
    _ body: @Sendable (Harness) async throws -> Void
) async throws {
    let harness = try Harness(
        configuration: configuration,
        queueConfiguration: queueConfiguration,
        clock: clock,
        deadlines: deadlines,
        presence: presence,
        store: store,
        queue: queue,
        relay: relay,
        receiptOutbox: receiptOutbox
    )
    try await harness.seed()
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await harness.service.run() }
        // An adapter that owns a connection runs as a service and closes it when cancelled.
        if let presence = harness.presence as? any Service {
            group.addTask { try await presence.run() }
        }
        if let store = harness.store as? any Service {
            group.addTask { try await store.run() }
        }
        if let queue = harness.queue as? any Service {
            group.addTask { try await queue.run() }
        }
        defer { group.cancelAll() }
        try await body(harness)
    }
}

/// Polls `condition` every `interval` until it holds or `timeout` passed; the engine confirms and records
/// deliveries in the background, so some effects land a moment after the call that caused them.
public func eventually(
    _ description: String,
    timeout: Duration = .seconds(5),
    every interval: Duration = .milliseconds(2),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: @Sendable () async throws -> Bool
) async rethrows {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try? await Task.sleep(for: interval)
    }
    // Once more after the deadline: a sleep that overran it (a loaded machine) must not fail a condition that held.
    if try await condition() { return }
    Issue.record("timed out waiting until \(description)", sourceLocation: sourceLocation)
}

/// A value shared between test tasks.
public final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    public init(_ value: Value) { self.mutex = Mutex(value) }

    public var value: Value { self.mutex.withLock { $0 } }

    public func withLock<Result: Sendable>(_ body: (inout Value) -> Result) -> Result {
        self.mutex.withLock { body(&$0) }
    }
}

extension Result where Failure == ChatError {
    /// The error code of a failure, nil for a success.
    public var errorCode: ChatError.Code? {
        if case .failure(let error) = self { error.code } else { nil }
    }
}
