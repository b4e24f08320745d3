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

/// This process's CPU time (user + system), in microseconds: the store's own cost, apart from the server's.
func cpuMicroseconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6 + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
}

/// CPU per operation of the last `rate` call, in microseconds.
nonisolated(unsafe) var lastCPU = 0.0

func rate(_ operations: Int, _ body: () async throws -> Void) async rethrows -> Double {
    let start = ContinuousClock.now
    let cpu = cpuMicroseconds()
    try await body()
    lastCPU = (cpuMicroseconds() - cpu) / Double(operations)
    return Double(operations) / ((ContinuousClock.now - start) / .seconds(1))
}

let sequential = try await rate(count) {
    for index in 0..<count { _ = try await store.insert(message(index), pendingFor: ["bob"]) }
}
let sequentialCPU = lastCPU
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
let concurrentCPU = lastCPU
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
let catchUpCPU = lastCPU
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
let marksCPU = lastCPU
func line(_ name: String, _ rate: Double, _ cpu: Double, _ extra: String = "") -> String {
    name.padding(toLength: 31, withPad: " ", startingAt: 0) + "\(Int(rate)) msg/s, \(Int(cpu.rounded())) µs of this process's CPU per message\(extra)"
}
print("MongoDB store, \(count) messages of 200 bytes per insert row")
print(line("inserts, one task:", sequential, sequentialCPU))
print(line("inserts, eight tasks:", concurrent, concurrentCPU))
print(line("catch-up reads (pages of 256):", catchUp, catchUpCPU, " (\(caughtUp) read)"))
print(line("catch-up + readBy batches:", marks, marksCPU, " (\(delivered) marked)"))
await store.close()
