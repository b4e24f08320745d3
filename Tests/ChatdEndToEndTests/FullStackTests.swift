import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// chatd with real RabbitMQ, Redis and the MongoDB-wire server on loopback, and real python-socketio clients,
/// through the failures the product promises to survive.
@Suite("chatd full stack", .serialized)
struct FullStackTests {
    static func environment(mongo: MongoTestServer? = nil, rabbit: RabbitTestServer? = nil, redis: RedisTestServer? = nil) -> [String: String] {
        var environment: [String: String] = ["ACK_TIMEOUT_MS": "3000"]
        if let mongo { environment["MONGODB_URI"] = "\(mongo.uri)/\(mongo.database)?serverSelectionTimeoutMS=1000" }
        if let rabbit {
            environment["RABBITMQ_HOST"] = "127.0.0.1"
            environment["RABBITMQ_PORT"] = "\(rabbit.port)"
        }
        if let redis {
            environment["REDIS_HOST"] = "127.0.0.1"
            environment["REDIS_PORT"] = "\(redis.port)"
        }
        return environment
    }

    /// `chatd queue-info --user <user>`'s ready count.
    static func queued(for user: String, chatd: ChatdProcess) async throws -> Int? {
        let child = try ChildProcess(ChatdProcess.binary, arguments: ["queue-info", "--user", user], environment: chatd.environment, label: "queue-info")
        defer { Task { await child.cleanUp() } }
        guard await child.wait(timeout: .seconds(20)) == 0 else {
            Issue.record("queue-info failed: \(child.stderr)")
            return nil
        }
        guard let range = child.stdout.range(of: #"ready=(\d+)"#, options: .regularExpression) else { return nil }
        return Int(child.stdout[range].dropFirst("ready=".count))
    }

    @Test("The product's manual test scenario, all ten steps, with RabbitMQ stopped at step 6 and restarted at step 9")
    func manualScenario() async throws {
        try await withDriver { clients in
            try await withMongoServer { mongo in
                try await withRedisServer { redis in
                    try await withRabbitServer { rabbit in
                        try await withChatd(environment: Self.environment(mongo: mongo, rabbit: rabbit, redis: redis)) { chatd in
                            try await self.manualScenario(chatd: chatd, clients: clients, rabbit: rabbit)
                        }
                    }
                }
            }
        }
    }

    private func manualScenario(chatd: ChatdProcess, clients: ClientDriver, rabbit: RabbitTestServer) async throws {
        let alice = try await chatd.token("alice")
        let ab = try #require(try await chatd.http("POST", "/api/chats", token: alice, body: ["participants": ["bob"]]).json?["_id"]?.string)
        let ac = try #require(try await chatd.http("POST", "/api/chats", token: alice, body: ["participants": ["carol"]]).json?["_id"]?.string)

        // 1. A and B connected to the chat (C too, for steps 7 to 10).
        for user in ["alice", "bob", "carol"] { try await clients.connect(user, to: chatd) }
        // 2. B closes the connection.
        try await clients("disconnect", ["user": "bob"])
        // 3. A sends "Hello B!".
        let hello = try await clients.send("alice", chat: ab, "Hello B!")
        let helloID = try #require(hello["messageId"]?.string)
        // 4. The message is queued in RabbitMQ: bob's offline queue holds 1.
        try await eventually("bob's queue to hold the message") { try await Self.queued(for: "bob", chatd: chatd) == 1 }
        #expect(chatd.log.contains("Message queued for offline user"))
        // 5. B reconnects: receives "Hello B!", and readBy includes B; the queue entry is acknowledged.
        try await clients.connect("bob", to: chatd)
        #expect(try await clients("reconnected", ["user": "bob"])["delivered"] == 1)
        let caughtUp = try await clients.events("bob", "message:received")
        #expect(caughtUp.map { $0["content"] } == ["Hello B!"] && caughtUp.first?["isNew"] == false)
        try await eventually("readBy to include bob") {
            let receipts = try await chatd.http("GET", "/api/messages/\(helloID)/receipts", token: alice)
            return receipts.json?["receipts"]?.array?.contains { $0["userId"] == "bob" && $0["status"] == "delivered" } == true
        }
        #expect(try await Self.queued(for: "bob", chatd: chatd) == 0)

        // 6. RabbitMQ goes down.
        await rabbit.stop()
        // 7. C goes offline; A sends a message to C (and one to B, who is online).
        try await clients("disconnect", ["user": "carol"])
        let toCarol = try await clients.send("alice", chat: ac, "Hello C, the broker is down")
        #expect(toCarol["messageId"] != nil, "the send succeeds while RabbitMQ is down: \(toCarol)")
        _ = try await clients.send("alice", chat: ab, "live while the broker is down")
        // 8. Delivery goes on over WebSocket: B gets his at once; chatd says the queue is degraded.
        try await eventually("bob to get the live message") { try await clients.received("bob").contains("live while the broker is down") }
        try await eventually("readyz to report the queue degraded") {
            let ready = try await chatd.http("GET", "/readyz")
            return ready.status == 200 && ready.json?["components"]?["queue"] == "degraded"
        }
        // The adapter says which product failed, in the product's words; the engine says what it means.
        #expect(chatd.log.contains("RabbitMQ connection failed, offline messaging disabled"))
        #expect(chatd.log.contains("Offline queue unreachable; offline messaging disabled"))
        // 9. RabbitMQ comes back.
        try await rabbit.restart()
        try await eventually("readyz to report the queue ok again", timeout: .seconds(20)) {
            try await chatd.http("GET", "/readyz").json?["components"]?["queue"] == "ok"
        }
        // 10. C reconnects and receives the message sent while the broker was down (from the store).
        try await clients.connect("carol", to: chatd)
        #expect(try await clients("reconnected", ["user": "carol"])["delivered"] == 1)
        #expect(try await clients.received("carol") == ["Hello C, the broker is down"])
    }

    @Test("kill -9 of chatd while draining 1,000 queued messages, then restart: all 1,000 arrive, none lost")
    func crashDuringDrain() async throws {
        try await withDriver { clients in
            try await withMongoServer { mongo in
                try await withRabbitServer { rabbit in
                    try await withChatd(environment: Self.environment(mongo: mongo, rabbit: rabbit)) { chatd in
                        let alice = try await chatd.token("alice")
                        let ab = try #require(try await chatd.http("POST", "/api/chats", token: alice, body: ["participants": ["bob"]]).json?["_id"]?.string)
                        try await clients.connect("alice", to: chatd)
                        var sent: Set<String> = []
                        for index in 0..<1000 {
                            sent.insert(try #require(try await clients.send("alice", chat: ab, "queued \(index)")["messageId"]?.string))
                        }
                        try await eventually("all 1,000 to be queued", timeout: .seconds(30)) { try await Self.queued(for: "bob", chatd: chatd) == 1000 }
                        // bob acknowledges slowly, so the drain is still running when chatd is killed.
                        try await clients.connect("bob", to: chatd, ackDelayMs: 5)
                        try await clients("reconnected", ["user": "bob", "wait": false])
                        try await eventually("bob to be partway through", timeout: .seconds(30)) { try await clients.received("bob").count >= 100 }
                        await chatd.crash()
                        let before = Set(try await clients.events("bob", "message:received").compactMap { $0["_id"]?.string })
                        #expect(before.count < 1000, "the drain was interrupted")

                        try await chatd.restart()
                        try await clients.connect("bob", to: chatd)
                        _ = try await clients("reconnected", ["user": "bob", "timeout": 120])
                        let after = try await clients.events("bob", "message:received").compactMap { $0["_id"]?.string }
                        let received = before.union(after)
                        #expect(received == sent, "missing \(sent.subtracting(received).count) of 1,000")
                        #expect(try await Self.queued(for: "bob", chatd: chatd) == 0)
                    }
                }
            }
        }
    }
}
