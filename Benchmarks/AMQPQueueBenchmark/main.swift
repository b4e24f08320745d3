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
var drained = 0
let drain = try await rate(count) {
    let consumer = try await queue.consumer(for: "batched", prefetch: 64)
    while let delivery = try await consumer.next() {
        try await consumer.ack(delivery.tag)
        drained += 1
    }
    await consumer.close()
}
print("RabbitMQ offline queue, 200-byte messages, persistent, durable classic queue")
print("enqueue, one per confirm:         \(Int(single)) msg/s (\(count / 10) messages)")
print("enqueue, batches of 100 confirmed: \(Int(batched)) msg/s (\(count) messages)")
print("drain, get + ack one by one:       \(Int(drain)) msg/s (\(drained) messages)")
await queue.close()
