// Measures the MongoDB message store: inserts per second (one task, and eight at once) and catch-up reads.
// Run it with ./scripts/bench-store.sh, which starts nx-27017 on loopback for it (or pass a MONGODB_URI).
import ChatDomain
import ChatStoreMongo
import Foundation
import Logging

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    print("usage: mongo-store-benchmark <mongodb uri> [messages, default 2000]")
    exit(2)
}
let count = arguments.count >= 3 ? Int(arguments[2]) ?? 2000 : 2000
var configuration = MongoStoreConfiguration(uri: arguments[1])
configuration.database = "chatd_bench_\(UInt32.random(in: 0...UInt32.max))"
let store = try MongoMessageStore(configuration: configuration, logger: Logger(label: "bench"))
try await store.prepare()
try await store.saveChat(Chat(id: "bench", participants: ["alice", "bob"]))
let generator = MessageIDGenerator()

func message(_ index: Int) -> Message {
    let now = Date()
    return Message(
        id: generator.next(),
        chatID: "bench",
        senderID: "alice",
        content: String(repeating: "x", count: 200),
        readBy: [ReadReceipt(userID: "alice", readAt: now)],
        createdAt: now
    )
}

func rate(_ operations: Int, _ body: () async throws -> Void) async rethrows -> Double {
    let start = ContinuousClock.now
    try await body()
    return Double(operations) / ((ContinuousClock.now - start) / .seconds(1))
}

let sequential = try await rate(count) {
    for index in 0..<count { _ = try await store.insert(message(index), pendingFor: ["bob"]) }
}
let concurrent = try await rate(count) {
    try await withThrowingTaskGroup(of: Void.self) { group in
        for task in 0..<8 {
            group.addTask {
                for index in stride(from: task, to: count, by: 8) { _ = try await store.insert(message(index), pendingFor: ["bob"]) }
            }
        }
        try await group.waitForAll()
    }
}
var caughtUp = 0
let catchUp = try await rate(2 * count) {
    var after: MessageID?
    while true {
        let page = try await store.pendingMessages(for: "bob", createdSince: Date().addingTimeInterval(-3600), afterID: after, limit: 256)
        guard let last = page.last else { break }
        caughtUp += page.count
        after = last.id
    }
}
var delivered = 0
let marks = try await rate(2 * count) {
    var after: MessageID?
    while true {
        let page = try await store.pendingMessages(for: "bob", createdSince: Date().addingTimeInterval(-3600), afterID: after, limit: 256)
        guard let last = page.last else { break }
        try await store.markDelivered(page.map { DeliveryMark(messageID: $0.id, userID: "bob", at: Date()) })
        delivered += page.count
        after = last.id
    }
}
print("MongoDB store, \(count) messages of 200 bytes per insert row")
print("inserts, one task:            \(Int(sequential)) msg/s")
print("inserts, eight tasks:         \(Int(concurrent)) msg/s")
print("catch-up reads (pages of 256): \(Int(catchUp)) msg/s (\(caughtUp) read)")
print("catch-up + readBy batches:    \(Int(marks)) msg/s (\(delivered) marked)")
await store.close()
