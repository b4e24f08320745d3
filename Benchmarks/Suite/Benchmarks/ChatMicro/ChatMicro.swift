import Benchmark
import ChatDomain
import ChatTransport
import Foundation
import Logging

// Micro-benchmarks: time and allocations per operation of the codec, the message JSON and the delivery engine on
// its in-memory adapters. Run: cd Benchmarks/Suite && swift package benchmark (or ./scripts/bench.sh micro).

let sendPacket = #"42["message:send",{"chatId":"chat-ab","content":"hello there, this is a message of about sixty bytes","clientMessageId":"c-1"}]"#
let pollingPayload = Array(repeating: "2", count: 4).joined(separator: "\u{1e}") + "\u{1e}" + sendPacket
let sampleMessage = Message(
    id: MessageIDGenerator().next(),
    chatID: "chat-ab",
    senderID: "alice",
    content: String(repeating: "x", count: 200),
    readBy: [ReadReceipt(userID: "alice", readAt: Date())],
    createdAt: Date()
)

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        maxDuration: .seconds(3),
        maxIterations: 1_000_000
    )

    Benchmark("Engine.IO payload decode (5 packets)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try EngineIOPacket.decodePayload(pollingPayload))
        }
    }

    Benchmark("Socket.IO message:send decode") { benchmark in
        for _ in benchmark.scaledIterations {
            // The Socket.IO packet inside the Engine.IO message packet (`4` + `2[...]`).
            blackHole(try SocketIOPacket.decode(String(sendPacket.dropFirst())))
        }
    }

    Benchmark("Socket.IO event encode") { benchmark in
        let packet = SocketIOPacket.event("message:sent", [.object(["messageId": .string("6b0c4431c895fa32b1000000")])], ackID: 12)
        for _ in benchmark.scaledIterations {
            blackHole(packet.encoded)
        }
    }

    Benchmark("message:received JSON encode (200-byte content)") { benchmark in
        let received = ReceivedMessage(message: sampleMessage, sender: User(id: "alice", username: "Alice"), isNew: true)
        let encoder = JSONEncoder()
        for _ in benchmark.scaledIterations {
            blackHole(try encoder.encode(received))
        }
    }

    Benchmark("Engine send, live recipient (in-memory adapters)", configuration: .init(maxIterations: 20_000)) { benchmark in
        let engine = try await Engine.start()
        let request = SendMessageRequest(chatID: "chat-ab", content: String(repeating: "x", count: 200))
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(await engine.service.send(request, from: "alice-1"))
        }
        benchmark.stopMeasurement()
        engine.stop()
    }

    Benchmark("Engine drain of 1,000 queued messages (per message)", configuration: .init(scalingFactor: .kilo, maxIterations: 20)) { benchmark in
        for _ in 0..<benchmark.scaledIterations.count / 1000 {
            let engine = try await Engine.start(bobOnline: false)
            let request = SendMessageRequest(chatID: "chat-ab", content: String(repeating: "x", count: 200))
            for _ in 0..<1000 { _ = await engine.service.send(request, from: "alice-1") }
            engine.transport.open("bob-1")
            await engine.service.connect("bob-1", user: User(id: "bob", username: "Bob"))
            benchmark.startMeasurement()
            blackHole(await engine.service.reconnected("bob-1"))
            benchmark.stopMeasurement()
            engine.stop()
        }
    }
}

/// The engine on in-memory adapters with alice (and bob) connected in a direct chat.
struct Engine {
    let service: ChatService
    let transport: InMemoryTransport
    let task: Task<Void, Never>

    static func start(bobOnline: Bool = true) async throws -> Engine {
        let store = InMemoryMessageStore()
        let transport = InMemoryTransport()
        let service = try ChatService(
            dependencies: .init(store: store, queue: InMemoryMessageQueue(), presence: InMemoryPresenceStore(), transport: transport),
            logger: {
                var logger = Logger(label: "bench")
                logger.logLevel = .warning
                return logger
            }()
        )
        let task = Task { await service.run() }
        try await store.saveChat(Chat(id: "chat-ab", participants: ["alice", "bob"]))
        transport.open("alice-1")
        await service.connect("alice-1", user: User(id: "alice", username: "Alice"))
        if bobOnline {
            transport.open("bob-1")
            await service.connect("bob-1", user: User(id: "bob", username: "Bob"))
        }
        return Engine(service: service, transport: transport, task: task)
    }

    func stop() { self.task.cancel() }
}
