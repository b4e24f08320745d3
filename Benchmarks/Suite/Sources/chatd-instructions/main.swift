import ChatDomain
import ChatEncryption
import ChatTransport
import Dispatch
import Foundation
import Logging

// Runs one hot-path operation a given number of times, for instruction counting under valgrind (callgrind):
// `./scripts/bench.sh instructions` runs each operation twice, N and 2N times, and reports the difference
// divided by N, so start-up and set-up cancel out. Not a timing tool.
// The main thread blocks on a semaphore instead of being an async `main`: valgrind 3.19 crashes on the
// `dispatch_main` an async main ends in on Linux.
//
//   chatd-instructions <operation> <count>
//   operations: send-decode, received-encode, engine-send, seal, open
//   (`seal` and `open`: one 200-byte message's content sealed / opened with AES-256-GCM, encryption at rest)

let arguments = CommandLine.arguments
guard arguments.count == 3, let count = Int(arguments[2]), count > 0 else {
    FileHandle.standardError.write(Data("usage: chatd-instructions send-decode|received-encode|engine-send|seal|open <count>\n".utf8))
    exit(64)
}

/// Keeps a value alive so the optimiser cannot drop the work that made it.
@inline(never) func keep<T>(_ value: T) { withExtendedLifetime(value) {} }

/// Runs `operation` `count` times.
func run(_ operation: String, count: Int) async throws {
    var logger = Logger(label: "instructions")
    logger.logLevel = .warning
    let content = String(repeating: "x", count: 200)
    switch operation {
    case "seal", "open":
        // What encryption at rest adds per message: one seal on its way to the store (and one to the queue for
        // offline recipients, shared by all of them), one open per message read back.
        let sealing = MessageSealing(sealer: try AESGCMSealer(current: (id: "k1", key: Data(repeating: 7, count: 32))))
        let message = Message(id: MessageIDGenerator().next(), chatID: "6b0c4431c895fa32b1000000", senderID: "alice", content: content, createdAt: Date())
        let sealed = try sealing.seal(message)
        for _ in 0..<count {
            keep(operation == "seal" ? try sealing.seal(message) : try sealing.open(sealed))
        }

    case "send-decode":
        // The Socket.IO packet of a client's message:send as the server sees it after the Engine.IO type.
        let packet = #"217["message:send",{"chatId":"6b0c4431c895fa32b1000000","content":"\#(content)","clientMessageId":"c-1"}]"#
        for _ in 0..<count {
            guard let decoded = SocketIOServer.fastSend(packet) else { fatalError("the fast path refused its packet") }
            keep(decoded)
        }

    case "received-encode":
        // message:received as the server writes it, once per message for all its recipients.
        let authenticator = try await TokenAuthenticator(secret: String(repeating: "s", count: 32))
        let server = try SocketIOServer(authenticator: authenticator, logger: logger) { transport in
            try ChatService(
                dependencies: .init(
                    store: InMemoryMessageStore(),
                    queue: InMemoryMessageQueue(),
                    presence: InMemoryPresenceStore(),
                    transport: transport
                ),
                logger: logger
            )
        }
        let message = Message(
            id: MessageIDGenerator().next(),
            chatID: "6b0c4431c895fa32b1000000",
            senderID: "alice",
            content: content,
            readBy: [ReadReceipt(userID: "alice", readAt: Date())],
            createdAt: Date()
        )
        let event = OutboundEvent.messageReceived(ReceivedMessage(message: message, sender: User(id: "alice", username: "Alice"), isNew: true))
        for _ in 0..<count {
            let prepared = server.prepare(event)
            guard prepared.encoded != nil else { fatalError("message:received did not encode") }
            keep(prepared)
        }

    case "engine-send":
        // One message:send through the engine on its in-memory adapters, alice to bob, bob connected (live push,
        // acknowledged by the in-memory transport), the sender answered.
        let store = InMemoryMessageStore()
        let transport = InMemoryTransport()
        let service = try ChatService(
            dependencies: .init(store: store, queue: InMemoryMessageQueue(), presence: InMemoryPresenceStore(), transport: transport),
            logger: logger
        )
        let engine = Task { await service.run() }
        try await store.saveChat(Chat(id: "chat-ab", participants: ["alice", "bob"]))
        transport.open("alice-1")
        await service.connect("alice-1", user: User(id: "alice", username: "Alice"))
        transport.open("bob-1")
        await service.connect("bob-1", user: User(id: "bob", username: "Bob"))
        let request = SendMessageRequest(chatID: "chat-ab", content: content)
        for _ in 0..<count {
            keep(await service.send(request, from: "alice-1"))
        }
        engine.cancel()

    default:
        FileHandle.standardError.write(Data("unknown operation \(operation)\n".utf8))
        exit(64)
    }
}

let operation = arguments[1]
let finished = DispatchSemaphore(value: 0)
Task.detached {
    do {
        try await run(operation, count: count)
    } catch {
        FileHandle.standardError.write(Data("failed: \(error)\n".utf8))
        exit(1)
    }
    finished.signal()
}
finished.wait()
