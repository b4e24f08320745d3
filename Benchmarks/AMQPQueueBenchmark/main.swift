// Measures the RabbitMQ offline queue: confirmed enqueues per second (batches of 1 and 100) and drain
// (get + ack) per second. Run it with ./scripts/bench-queue.sh, which starts a broker on loopback for it.
import ChatBrokerAMQP
import ChatDomain
import Foundation
import Logging

let arguments = CommandLine.arguments
guard arguments.count >= 2, let port = Int(arguments[1]) else {
    print("usage: amqp-queue-benchmark <amqp port> [messages, default 10000]")
    exit(2)
}
let count = arguments.count >= 3 ? Int(arguments[2]) ?? 10_000 : 10_000
let queue = RabbitMQMessageQueue(configuration: AMQPQueueConfiguration(host: "127.0.0.1", port: port), logger: Logger(label: "bench"))
let generator = MessageIDGenerator()
let sender = User(id: "alice", username: "Alice")

func entries(_ count: Int, for user: UserID) -> [QueueEntry] {
    (0..<count).map { _ in
        let message = Message(id: generator.next(), chatID: "bench", senderID: "alice", content: String(repeating: "x", count: 200), createdAt: Date())
        return QueueEntry(message: message, sender: sender, recipient: user, enqueuedAt: Date())
    }
}

func rate(_ operations: Int, _ body: () async throws -> Void) async rethrows -> Double {
    let start = ContinuousClock.now
    try await body()
    return Double(operations) / ((ContinuousClock.now - start) / .seconds(1))
}

let single = try await rate(count / 10) {
    for entry in entries(count / 10, for: "one-by-one") { _ = try await queue.enqueue([entry], for: "one-by-one") }
}
let batched = try await rate(count) {
    let all = entries(count, for: "batched")
    for start in stride(from: 0, to: count, by: 100) {
        _ = try await queue.enqueue(Array(all[start..<min(start + 100, count)]), for: "batched")
    }
}
// As the engine's enqueue flushers do under load: 8 recipients at once, each with batches of 100, one after the
// other; the adapter's publish window lets their publishes overlap instead of waiting for each other's confirms.
let concurrent = try await rate(count) {
    try await withThrowingTaskGroup(of: Void.self) { group in
        for user in 0..<8 {
            let recipient = UserID("concurrent-\(user)")
            let mine = entries(count / 8, for: recipient)
            group.addTask {
                for start in stride(from: 0, to: mine.count, by: 100) {
                    _ = try await queue.enqueue(Array(mine[start..<min(start + 100, mine.count)]), for: recipient)
                }
            }
        }
        try await group.waitForAll()
    }
}
/// Drains `user`'s queue as the engine does: up to `window` deliveries in flight, acknowledged together.
func drain(_ user: UserID, window: Int) async throws -> Int {
    var drained = 0
    let consumer = try await queue.consumer(for: user, prefetch: window)
    var inFlight: [DeliveryTag] = []
    while true {
        while inFlight.count < window, let delivery = try await consumer.next() { inFlight.append(delivery.tag) }
        guard !inFlight.isEmpty else { break }
        // As the engine does: every confirmed delivery settled so far is acknowledged together.
        try await consumer.ack(inFlight)
        drained += inFlight.count
        inFlight.removeAll()
    }
    await consumer.close()
    return drained
}

_ = try await queue.enqueue(entries(count, for: "window-1"), for: "window-1")
var drainedOne = 0
let drainOne = try await rate(count) { drainedOne = try await drain("window-1", window: 1) }
var drained = 0
let drainWindow = try await rate(count) { drained = try await drain("batched", window: 64) }
// A reconnect of a user with nothing queued: open a consumer, find the queue empty, close it.
let emptyDrains = count / 50
let emptyDrain = try await rate(emptyDrains) {
    for _ in 0..<emptyDrains { _ = try await drain("nobody", window: 64) }
}
print("RabbitMQ offline queue, 200-byte messages, persistent, durable classic queue")
print("enqueue, one per confirm:         \(Int(single)) msg/s (\(count / 10) messages)")
print("enqueue, batches of 100 confirmed: \(Int(batched)) msg/s (\(count) messages)")
print("enqueue, 8 users at once, batches of 100: \(Int(concurrent)) msg/s (\(count) messages)")
print("drain, window 1 (prefetch 1):      \(Int(drainOne)) msg/s (\(drainedOne) messages)")
print("drain, window 64 (prefetch 64):    \(Int(drainWindow)) msg/s (\(drained) messages)")
print("drain of an empty queue (open, next, close): \(Int(emptyDrain))/s (\(emptyDrains) drains)")
await queue.close()
