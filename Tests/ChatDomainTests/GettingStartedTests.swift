import ChatDomain
import Logging
import Testing

/// The example of the DocC article "Getting started" (Sources/ChatDomain/ChatDomain.docc/GettingStarted.md), kept
/// compiling and passing here.
@Suite("Getting started")
struct GettingStartedTests {
    @Test("The article's example: offline messages arrive on reconnect")
    func offlineMessagesArriveOnReconnect() async throws {
        let transport = InMemoryTransport()
        let store = InMemoryMessageStore()
        let engine = try ChatService(
            dependencies: .init(store: store, queue: InMemoryMessageQueue(), presence: InMemoryPresenceStore(), transport: transport),
            logger: Logger(label: "test")
        )
        // The engine's background work (batched writes, timers) runs while it serves.
        let running = Task { await engine.run() }
        defer { running.cancel() }

        let alice = User(id: "alice", username: "Alice")
        let bob = User(id: "bob", username: "Bob")
        let chat = try await engine.createChat(by: alice, participants: ["bob"], name: nil)

        transport.open("alice-1")
        await engine.connect("alice-1", user: alice)
        _ = try await engine.send(SendMessageRequest(chatID: chat.id, content: "while you were away"), from: "alice-1").get()

        transport.open("bob-1")
        await engine.connect("bob-1", user: bob)
        #expect(await engine.reconnected("bob-1") == 1)
        #expect(transport.receivedMessages(of: "bob-1").map(\.message.content) == ["while you were away"])
    }
}
