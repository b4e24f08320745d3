import ArgumentParser
import ChatDomain
import ChatTransport
import Foundation
import Synchronization

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Drives a running chatd with one scenario and prints one JSON line of results.
@main
struct ChatLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chatd-load",
        abstract: "A native Socket.IO load generator for chatd: latency, throughput, drain and connections scenarios."
    )

    @Option(help: "chatd's base URL.") var url = "http://127.0.0.1:3000"
    @Option(help: "Another chatd node's base URL for the receivers (latency, throughput): cross-node delivery.")
    var receiverUrl: String?
    @Option(help: "That node's process id, whose CPU time counts too.") var receiverPid: Int32?
    @Option(help: "chatd's JWT_SECRET (default: chatd's development secret).")
    var secret = "chatd-development-secret-do-not-use-in-production"
    @Option(help: "latency, throughput, drain or connections.") var scenario: String
    @Option(help: "chatd's process id, to read its CPU time and memory from /proc.") var serverPid: Int32?
    @Option(help: "Messages to send (latency, throughput, drain).") var messages = 5000
    @Option(help: "Messages per second (latency).") var rate = 1000
    @Option(help: "Sender/receiver pairs (throughput).") var pairs = 4
    @Option(help: "Messages in flight per pair (throughput).") var window = 64
    @Option(help: "Idle sockets to open (connections).") var connections = 10_000
    @Option(help: "Content size in bytes.") var contentBytes = 200
    @Option(help: "Give up after this many seconds.") var timeout = 120

    func run() async throws {
        let context = try await LoadContext(
            base: self.url,
            receiverBase: self.receiverUrl ?? self.url,
            secret: self.secret,
            serverPIDs: [self.serverPid, self.receiverPid].compactMap { $0 }
        )
        let result: [String: Double]
        switch self.scenario {
        case "latency": result = try await self.latency(context)
        case "throughput": result = try await self.throughput(context)
        case "drain": result = try await self.drain(context)
        case "connections": result = try await self.openConnections(context)
        default: throw ValidationError("unknown scenario '\(self.scenario)': use latency, throughput, drain or connections")
        }
        var line = ["\"scenario\":\"\(self.scenario)\""]
        for (key, value) in result.sorted(by: { $0.key < $1.key }) {
            line.append("\"\(key)\":\(value.isFinite ? String(format: "%.3f", value) : "null")")
        }
        print("{" + line.joined(separator: ",") + "}")
    }

    // MARK: Scenarios

    /// 1 sender → 1 receiver at a fixed rate: end-to-end latency percentiles.
    func latency(_ context: LoadContext) async throws -> [String: Double] {
        let run = context.runID
        let (sender, receiver) = ("lat-a-\(run)", "lat-b-\(run)")
        let chat = try await context.createChat(owner: sender, with: [receiver])
        let latencies = Mutex<[Int64]>([])
        let receiverClient = try await context.connect(receiver, toReceiverNode: true) { packet in
            if let sent = Self.sentAt(packet) { latencies.withLock { $0.append(now() - sent) } }
        }
        let senderClient = try await context.connect(sender)
        let cpu = context.serverCPU()
        let interval = 1_000_000_000 / Int64(self.rate)
        let start = now()
        for index in 0..<self.messages {
            let due = start + Int64(index) * interval
            let wait = due - now()
            if wait > 0 { try await Task.sleep(for: .nanoseconds(wait)) }
            try await senderClient.emit(Self.send(chat: chat, bytes: self.contentBytes))
        }
        try await Self.wait(timeout: self.timeout) { latencies.withLock { $0.count } >= self.messages }
        let elapsed = Double(now() - start) / 1e9
        let cpuUsed = context.serverCPU() - cpu
        await senderClient.close()
        await receiverClient.close()
        let sorted = latencies.withLock { $0 }.sorted()
        return [
            "messages": Double(self.messages), "delivered": Double(sorted.count), "lost": Double(self.messages - sorted.count),
            "rate": Double(self.rate), "seconds": elapsed,
            "p50_ms": Self.percentile(sorted, 0.50), "p99_ms": Self.percentile(sorted, 0.99), "max_ms": Double(sorted.last ?? 0) / 1e6,
            "server_cpu_us_per_msg": sorted.isEmpty ? .nan : Double(cpuUsed) / 1e3 / Double(sorted.count),
        ]
    }

    /// N senders → N receivers, each pair with a bounded number of messages in flight: delivered messages/s.
    func throughput(_ context: LoadContext) async throws -> [String: Double] {
        let run = context.runID
        let perPair = self.messages / self.pairs
        let delivered = Atomic<Int>(0)
        var senders: [(SocketIOClient, String, Counter)] = []
        var receivers: [SocketIOClient] = []
        for pair in 0..<self.pairs {
            let (sender, receiver) = ("tp-a\(pair)-\(run)", "tp-b\(pair)-\(run)")
            let chat = try await context.createChat(owner: sender, with: [receiver])
            let counter = Counter()
            receivers.append(
                try await context.connect(receiver, toReceiverNode: true) { packet in
                    if packet.contains("message:received") {
                        counter.received()
                        delivered.add(1, ordering: .relaxed)
                    }
                }
            )
            senders.append((try await context.connect(sender), chat, counter))
        }
        let cpu = context.serverCPU()
        let start = now()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (client, chat, counter) in senders {
                group.addTask {
                    for _ in 0..<perPair {
                        await counter.waitForRoom(window: self.window)
                        counter.sent()
                        try await client.emit(Self.send(chat: chat, bytes: self.contentBytes))
                    }
                }
            }
            try await group.waitForAll()
        }
        let total = perPair * self.pairs
        try await Self.wait(timeout: self.timeout) { delivered.load(ordering: .relaxed) >= total }
        let elapsed = Double(now() - start) / 1e9
        let cpuUsed = context.serverCPU() - cpu
        for (client, _, _) in senders { await client.close() }
        for client in receivers { await client.close() }
        let count = delivered.load(ordering: .relaxed)
        return [
            "messages": Double(total), "delivered": Double(count), "lost": Double(total - count), "pairs": Double(self.pairs),
            "window": Double(self.window), "seconds": elapsed, "msgs_per_s": Double(count) / elapsed,
            "server_cpu_us_per_msg": count == 0 ? .nan : Double(cpuUsed) / 1e3 / Double(count),
        ]
    }

    /// A receiver offline while N messages are sent to it, then back with `user:reconnected`.
    func drain(_ context: LoadContext) async throws -> [String: Double] {
        let run = context.runID
        let (sender, receiver) = ("dr-a-\(run)", "dr-b-\(run)")
        let chat = try await context.createChat(owner: sender, with: [receiver])
        let senderClient = try await context.connect(sender)
        // Send with acks, a window at a time: every message is stored and queued before the receiver returns.
        let sendStart = now()
        var sent = 0
        while sent < self.messages {
            let batch = min(64, self.messages - sent)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<batch {
                    group.addTask {
                        let ack = try await senderClient.call(Self.send(chat: chat, bytes: self.contentBytes))
                        guard ack.contains("messageId") else { throw LoadError("send refused: \(ack)") }
                    }
                }
                try await group.waitForAll()
            }
            sent += batch
        }
        let sendSeconds = Double(now() - sendStart) / 1e9
        let received = Mutex<Set<String>>([])
        let last = Atomic<Int64>(0)
        let receiverClient = try await context.connect(receiver) { packet in
            if let id = Self.messageID(packet) {
                received.withLock { _ = $0.insert(id) }
                last.store(now(), ordering: .relaxed)
            }
        }
        let cpu = context.serverCPU()
        let start = now()
        _ = try await receiverClient.call("[\"user:reconnected\"]")
        try await Self.wait(timeout: self.timeout) { received.withLock { $0.count } >= self.messages }
        let cpuUsed = context.serverCPU() - cpu
        let count = received.withLock { $0.count }
        let seconds = Double(last.load(ordering: .relaxed) - start) / 1e9
        await senderClient.close()
        await receiverClient.close()
        return [
            "messages": Double(self.messages), "delivered": Double(count), "lost": Double(self.messages - count),
            "seconds_to_last": seconds, "send_seconds": sendSeconds, "msgs_per_s": Double(count) / max(seconds, 1e-9),
            "server_cpu_us_per_msg": count == 0 ? .nan : Double(cpuUsed) / 1e3 / Double(count),
        ]
    }

    /// N idle authenticated sockets: the server's resident memory per socket.
    func openConnections(_ context: LoadContext) async throws -> [String: Double] {
        let run = context.runID
        let before = context.serverRSS()
        let cpu = context.serverCPU()
        let start = now()
        var clients: [SocketIOClient] = []
        clients.reserveCapacity(self.connections)
        var opened = 0
        while opened < self.connections {
            let batch = min(200, self.connections - opened)
            let made = try await withThrowingTaskGroup(of: SocketIOClient.self) { group in
                for index in opened..<(opened + batch) {
                    group.addTask { try await context.connect("idle-\(index)-\(run)") }
                }
                var made: [SocketIOClient] = []
                for try await client in group { made.append(client) }
                return made
            }
            clients += made
            opened += batch
        }
        let connectSeconds = Double(now() - start) / 1e9
        try await Task.sleep(for: .seconds(2))
        let after = context.serverRSS()
        let cpuUsed = context.serverCPU() - cpu
        for client in clients { await client.close() }
        return [
            "connections": Double(opened), "rss_before_kb": Double(before) / 1024, "rss_after_kb": Double(after) / 1024,
            "rss_kb_per_conn": Double(after - before) / 1024 / Double(opened), "connect_seconds": connectSeconds,
            "server_cpu_us_per_conn": Double(cpuUsed) / 1e3 / Double(opened),
        ]
    }

    // MARK: Helpers

    static func send(chat: String, bytes: Int) -> String {
        let stamp = "t=\(now());"
        let padding = String(repeating: "x", count: max(0, bytes - stamp.utf8.count))
        return "[\"message:send\",{\"chatId\":\"\(chat)\",\"content\":\"\(stamp)\(padding)\"}]"
    }

    /// The send time embedded in a `message:received` packet's content.
    static func sentAt(_ packet: String) -> Int64? {
        guard packet.contains("message:received"), let range = packet.range(of: "\"content\":\"t=") else { return nil }
        let digits = packet[range.upperBound...].prefix { $0.isNumber }
        return Int64(digits)
    }

    /// The `_id` of a `message:received` packet.
    static func messageID(_ packet: String) -> String? {
        guard packet.contains("message:received") else { return nil }
        // Keys come in any order, and the sender object has an `_id` too: take the one that is a message id.
        var rest = packet[...]
        while let range = rest.range(of: "\"_id\":\"") {
            let candidate = rest[range.upperBound...].prefix(25)
            if candidate.count == 25, candidate.last == "\"", candidate.dropLast().allSatisfy(\.isHexDigit) {
                return String(candidate.dropLast())
            }
            rest = rest[range.upperBound...]
        }
        return nil
    }

    static func percentile(_ sorted: [Int64], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let index = min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)
        return Double(sorted[max(0, index)]) / 1e6
    }

    static func wait(timeout: Int, until condition: () -> Bool) async throws {
        let deadline = now() + Int64(timeout) * 1_000_000_000
        while !condition() {
            guard now() < deadline else { return }
            try await Task.sleep(for: .milliseconds(1))
        }
    }
}

/// Messages in flight for one pair: the sender waits while `window` are unreceived.
final class Counter: Sendable {
    private let state = Mutex<(sent: Int, received: Int, waiter: CheckedContinuation<Void, Never>?, window: Int)>((0, 0, nil, 0))

    func sent() { self.state.withLock { $0.sent += 1 } }

    func received() {
        let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.received += 1
            guard state.sent - state.received < state.window, let waiter = state.waiter else { return nil }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    func waitForRoom(window: Int) async {
        await withCheckedContinuation { continuation in
            let ready = self.state.withLock { state in
                state.window = window
                if state.sent - state.received < window { return true }
                state.waiter = continuation
                return false
            }
            if ready { continuation.resume() }
        }
    }
}

private let epoch = ContinuousClock.now

/// Nanoseconds since this process started (the load generator's one clock for send and receive times).
func now() -> Int64 {
    let (seconds, attoseconds) = (ContinuousClock.now - epoch).components
    return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
}

/// What every scenario shares: the server, tokens, chats, and /proc readings of the server process.
struct LoadContext: Sendable {
    let base: String
    /// Where receivers connect: another node for cross-node scenarios, else `base`.
    let receiverBase: String
    let authenticator: TokenAuthenticator
    let serverPIDs: [Int32]
    let runID = String(UInt32.random(in: 0...UInt32.max), radix: 36)

    init(base: String, receiverBase: String, secret: String, serverPIDs: [Int32]) async throws {
        self.base = base
        self.receiverBase = receiverBase
        self.authenticator = try await TokenAuthenticator(secret: secret)
        self.serverPIDs = serverPIDs
    }

    func token(_ user: String) async throws -> String {
        try await self.authenticator.token(for: User(id: UserID(user), username: user), lifetime: .seconds(3600))
    }

    func connect(_ user: String, toReceiverNode: Bool = false, onPacket: @escaping @Sendable (String) -> Void = { _ in }) async throws -> SocketIOClient {
        let base = toReceiverNode ? self.receiverBase : self.base
        return try await SocketIOClient.connect(base: base, user: user, token: try await self.token(user), onPacket: onPacket)
    }

    func createChat(owner: String, with participants: [String]) async throws -> String {
        var request = URLRequest(url: URL(string: self.base + "/api/chats")!)
        request.httpMethod = "POST"
        request.setValue("Bearer \(try await self.token(owner))", forHTTPHeaderField: "Authorization")
        request.httpBody = Data("{\"participants\":[\(participants.map { "\"\($0)\"" }.joined(separator: ","))]}".utf8)
        let (data, _) = try await URLSession.shared.data(for: request)
        let text = String(decoding: data, as: UTF8.self)
        guard let range = text.range(of: "\"_id\":\"") else { throw LoadError("could not create a chat: \(text)") }
        return String(text[range.upperBound...].prefix { $0 != "\"" })
    }

    /// The servers' CPU time in nanoseconds, summed over their threads (/proc/<pid>/task/*/schedstat).
    func serverCPU() -> Int64 {
        self.serverPIDs.reduce(0) { total, pid in
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            return total + tasks.reduce(0) { sum, task in
                let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/schedstat", encoding: .utf8)) ?? ""
                return sum + (Int64(text.split(separator: " ").first ?? "") ?? 0)
            }
        }
    }

    /// The (first) server's resident memory in bytes (/proc/<pid>/status VmRSS).
    func serverRSS() -> Int64 {
        guard let pid = self.serverPIDs.first,
            let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return 0 }
        return (Int64(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
    }
}
