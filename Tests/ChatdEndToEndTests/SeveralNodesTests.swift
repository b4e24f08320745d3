import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// Two or three chatd processes on one RabbitMQ, one Redis and one MongoDB-wire server, with python-socketio
/// clients on each: what a deployment behind a load balancer sees.
@Suite("chatd on several nodes", .serialized)
struct SeveralNodesEndToEndTests {
    /// Runs `body` with nodes `node-1` and `node-2` on one full stack, once both read their inboxes.
    private func withTwoNodes(_ body: (ChatdProcess, ChatdProcess, RabbitTestServer, ClientDriver) async throws -> Void) async throws {
        try await self.withNodes(2) { nodes, rabbit, clients in try await body(nodes[0], nodes[1], rabbit, clients) }
    }

    /// Runs `body` with nodes `node-1` ... `node-<count>` on one full stack (`environment` added to each), once
    /// every one reads its inbox.
    private func withNodes(
        _ count: Int,
        environment extra: [String: String] = [:],
        _ body: ([ChatdProcess], RabbitTestServer, ClientDriver) async throws -> Void
    ) async throws {
        try await withDriver { clients in
            try await withMongoServer { mongo in
                try await withRedisServer { redis in
                    try await withRabbitServer { rabbit in
                        let services = FullStackTests.environment(mongo: mongo, rabbit: rabbit, redis: redis).merging(extra) { $1 }
                        func start(_ started: [ChatdProcess]) async throws {
                            guard started.count < count else {
                                // A node's inbox exists once it reads it; before that, forwards to it take the
                                // offline path.
                                await eventually("every node to read its inbox", timeout: .seconds(20)) {
                                    started.allSatisfy { $0.log.contains("Reading this node's inbox") }
                                }
                                try await body(started, rabbit, clients)
                                return
                            }
                            try await withChatd(environment: services.merging(["NODE_ID": "node-\(started.count + 1)"]) { $1 }) { node in
                                try await start(started + [node])
                            }
                        }
                        try await start([])
                    }
                }
            }
        }
    }

    @Test("Users on different nodes talk live: each message arrives at once (isNew), in order, both ways, and is recorded delivered")
    func liveAcrossNodes() async throws {
        try await self.withTwoNodes { one, two, _, clients in try await self.conversation(one, two, clients) }
    }

    @Test("RabbitMQ down while two nodes serve: local delivery goes on, sends are confirmed, the user on the other node gets everything from the store on reconnect")
    func brokerDown() async throws {
        try await self.withTwoNodes { one, two, rabbit, clients in
            let token = try await one.token("alice")
            let chat = try #require(try await one.http("POST", "/api/chats", token: token, body: ["participants": ["bob", "carol"]]).json?["_id"]?.string)
            try await clients.connect("alice", to: one)
            try await clients.connect("carol", to: one)
            try await clients.connect("bob", to: two)
            _ = try await clients.send("alice", chat: chat, "before")
            try await eventually("bob and carol to get the first message") {
                let (bob, carol) = (try await clients.received("bob"), try await clients.received("carol"))
                return bob == ["before"] && carol == ["before"]
            }

            await rabbit.stop()
            var during: [String] = []
            for index in 0..<3 {
                let sent = try await clients.send("alice", chat: chat, "during \(index)")
                #expect(sent["messageId"] != nil, "stored, so confirmed: \(sent)")
                during.append("during \(index)")
            }
            let expected = ["before"] + during
            // carol is on alice's node: live as ever.
            try await eventually("carol (same node) to get them live") { try await clients.received("carol") == expected }
            // bob is on the other node: neither the relay nor his queue can take them; the store holds them for him.
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await clients.received("bob") == ["before"])
            try await clients("disconnect", ["user": "bob"])
            try await clients.connect("bob", to: two)
            let answer = try await clients("reconnected", ["user": "bob"])
            #expect(answer["delivered"] == .number(3), "\(answer)")
            let caughtUp = try await clients.events("bob", "message:received")
            #expect(caughtUp.compactMap { $0["content"]?.string } == during)
            #expect(caughtUp.allSatisfy { $0["isNew"] == .bool(false) })
        }
    }

    @Test("kill -9 of a node, messages forwarded to it meanwhile, restart with the same NODE_ID: its inbox is read once, the user gets everything, then live again")
    func crashAndRestart() async throws {
        // A presence TTL longer than the test: node 2's heartbeat never expires, so only the restarted node itself
        // can clean up after its previous life (node 1's janitor never sees node 2 dead).
        try await self.withNodes(2, environment: ["PRESENCE_TTL_MS": "120000"]) { nodes, _, clients in
            let (one, two) = (nodes[0], nodes[1])
            let token = try await one.token("alice")
            let chat = try #require(try await one.http("POST", "/api/chats", token: token, body: ["participants": ["bob"]]).json?["_id"]?.string)
            try await clients.connect("alice", to: one)
            try await clients.connect("bob", to: two)
            let before = try #require(try await clients.send("alice", chat: chat, "before")["messageId"]?.string)
            try await eventually("bob to get the first message live") { try await clients.received("bob") == ["before"] }
            // Its delivery recorded before the crash (readBy writes are batched: a crash before they land leaves it
            // pending, and bob would get it once more after the restart, with the same id, as designed).
            try await eventually("bob's receipt for the first message", timeout: .seconds(10)) {
                let receipts = try await one.http("GET", "/api/messages/\(before)/receipts", token: token)
                return receipts.json?["receipts"]?.array?.contains { $0["userId"] == "bob" && $0["status"] == "delivered" } == true
            }

            await two.crash()
            try await clients("disconnect", ["user": "bob"])
            // Presence still names node 2 (its entries live until its heartbeat key expires): these go to its inbox.
            let during = (0..<10).map { "while node 2 was down \($0)" }
            for content in during {
                let sent = try await clients.send("alice", chat: chat, content)
                #expect(sent["messageId"] != nil, "\(sent)")
            }
            #expect(one.log.contains("Message forwarded to the recipient's node"))

            // Nobody has announced bob offline yet: his entry of node 2's dead process still counts (long TTL).
            #expect(try await clients.events("alice", "user:offline").isEmpty)
            try await two.restart()
            await eventually("node 2 to read its inbox again", timeout: .seconds(20)) { two.child.stderr.contains("Reading this node's inbox") }
            // No ghost: the restarted node removes bob's connection of its previous life and alice is told he is
            // offline.
            try await eventually("alice to see bob go offline", timeout: .seconds(20)) {
                try await clients.events("alice", "user:offline").contains { $0["userId"] == "bob" }
            }
            try await clients.connect("bob", to: two)
            let answer = try await clients("reconnected", ["user": "bob"])
            #expect(answer["delivered"] == .number(10), "\(answer)")
            let caughtUp = try await clients.events("bob", "message:received")
            #expect(caughtUp.compactMap { $0["content"]?.string } == during, "every message, once, in order")
            #expect(caughtUp.allSatisfy { $0["isNew"] == .bool(false) })

            // The inbox was consumed, not doubled; and bob is live on the restarted node, once.
            let info = try ChildProcess(ChatdProcess.binary, arguments: ["queue-info", "--node", "node-2"], environment: one.environment, label: "queue-info")
            let status = await info.wait(timeout: .seconds(20))
            #expect(status == 0 && info.stdout.contains("chatd.node.node-2\tready=0\tconsumers=1"), "\(info.stdout) \(info.stderr)")
            await info.cleanUp()
            _ = try await clients.send("alice", chat: chat, "after the restart")
            try await eventually("bob to get the next message live") { try await clients.received("bob").last == "after the restart" }
            try await Task.sleep(for: .milliseconds(300))
            let received = try await clients.events("bob", "message:received")
            #expect(received.filter { $0["content"]?.string == "after the restart" }.count == 1)
            #expect(received.last?["isNew"] == .bool(true))
        }
    }

    @Test("Three nodes, one group chat: every message reaches every other participant live, each sender's in acceptance order; a user's second device on a third node gets each one too, with one receipt")
    func threeNodes() async throws {
        try await self.withNodes(3) { nodes, _, clients in
            let (one, two, three) = (nodes[0], nodes[1], nodes[2])
            let token = try await one.token("alice")
            let chat = try #require(try await one.http("POST", "/api/chats", token: token, body: ["participants": ["bob", "carol"]]).json?["_id"]?.string)
            try await clients.connect("alice", to: one)
            try await clients.connect("bob", to: two)
            try await clients.connect("carol", to: three)
            // Each send is confirmed before the next: the order of acceptance is the order of the loop.
            var accepted: [(sender: String, content: String)] = []
            for round in 0..<5 {
                for sender in ["alice", "bob", "carol"] {
                    let content = "\(sender) \(round)"
                    let sent = try await clients.send(sender, chat: chat, content)
                    #expect(sent["messageId"] != nil, "\(sent)")
                    accepted.append((sender, content))
                }
            }
            for user in ["alice", "bob", "carol"] {
                let expected = accepted.filter { $0.sender != user }.map(\.content)
                try await eventually("\(user) to receive the 10 messages of the others", timeout: .seconds(15)) {
                    try await clients.received(user).count >= expected.count
                }
                let received = try await clients.received(user)
                #expect(received.sorted() == expected.sorted(), "\(user): every other participant's message, once")
                // Each sender's messages in the order they were accepted. Between senders on different nodes the
                // order is not kept (each node forwards on its own; `_id` and `createdAt` give the acceptance order).
                for sender in ["alice", "bob", "carol"] where sender != user {
                    #expect(received.filter { $0.hasPrefix(sender) } == expected.filter { $0.hasPrefix(sender) }, "\(user) from \(sender)")
                }
                #expect(try await clients.events(user, "message:received").allSatisfy { $0["isNew"] == .bool(true) }, "\(user): live")
            }

            // bob opens a second device on node 3 (next to carol): both of his connections get every message.
            try await clients.connect("bob", to: three, device: "bob-laptop")
            _ = try await clients("reconnected", ["user": "bob-laptop"])
            let before = try await clients.received("bob").count
            var last = ""
            for index in 0..<5 {
                last = try #require(try await clients.send("alice", chat: chat, "two devices \(index)")["messageId"]?.string)
            }
            let expected = (0..<5).map { "two devices \($0)" }
            try await eventually("both of bob's devices to get the five", timeout: .seconds(15)) {
                let (phone, laptop) = (try await clients.received("bob"), try await clients.received("bob-laptop"))
                return phone.count >= before + 5 && laptop.count >= 5
            }
            #expect(try await Array(clients.received("bob").dropFirst(before)) == expected)
            #expect(try await clients.received("bob-laptop") == expected)
            #expect(try await clients.events("bob-laptop", "message:received").allSatisfy { $0["isNew"] == .bool(true) })
            let newest = last
            try await eventually("the receipt to say delivered, once for bob", timeout: .seconds(10)) {
                let receipts = try await one.http("GET", "/api/messages/\(newest)/receipts", token: token).json?["receipts"]?.array ?? []
                return receipts.filter { $0["userId"] == "bob" }.count == 1 && receipts.contains { $0["userId"] == "bob" && $0["status"] == "delivered" }
            }
        }
    }

    @Test(
        "kill -9 of a node while 500 messages flow to its user: a contact sees them go offline within the presence TTL plus the janitor's period, they come back on a third node and get all 500, the dead node's inbox is gone",
        arguments: ["classic", "quorum"]
    )
    func crashUnderLoad(queueType: String) async throws {
        // PRESENCE_TTL_MS 3000: heartbeats and janitor rounds every second. Quorum queues are what a RabbitMQ
        // cluster uses (they delete differently).
        try await self.withNodes(3, environment: ["PRESENCE_TTL_MS": "3000", "RABBITMQ_QUEUE_TYPE": queueType]) { nodes, _, clients in
            let (one, two, three) = (nodes[0], nodes[1], nodes[2])
            let aliceToken = try await one.token("alice")
            let direct = try #require(try await one.http("POST", "/api/chats", token: aliceToken, body: ["participants": ["bob"]]).json?["_id"]?.string)
            // carol shares a chat with bob, so she is told about his presence.
            let carolToken = try await one.token("carol")
            _ = try #require(try await one.http("POST", "/api/chats", token: carolToken, body: ["participants": ["bob"]]).json?["_id"]?.string)
            try await clients.connect("alice", to: one)
            try await clients.connect("carol", to: three)
            try await clients.connect("bob", to: two, device: "bob-on-2")

            // alice sends 500, one every ~10 ms after the previous one was confirmed.
            let sent = Locked<[String: String]>([:])
            let sender = Task {
                for index in 0..<500 {
                    let content = "m\(index)"
                    let ack = try await clients.send("alice", chat: direct, content)
                    guard let id = ack["messageId"]?.string else { throw TestServerError("send \(index) failed: \(ack)") }
                    sent.withLock { $0[content] = id }
                    try await Task.sleep(for: .milliseconds(10))
                }
            }
            await eventually("alice to have sent 150", timeout: .seconds(60), every: .milliseconds(20)) { sent.value.count >= 150 }
            await two.crash()
            let killed = ContinuousClock.now
            try await eventually("carol (node 3) to see bob go offline", timeout: .seconds(30), every: .milliseconds(50)) {
                try await clients.events("carol", "user:offline").contains { $0["userId"] == "bob" }
            }
            let noticed = ContinuousClock.now - killed
            // The bound is the TTL (3 s) plus a janitor period (1 s); the rest is slack for a loaded two-core machine.
            #expect(noticed < .seconds(9), "user:offline \(noticed) after the kill")
            #expect(one.log.contains("Cleaned up after a dead node") || three.log.contains("Cleaned up after a dead node"))

            // bob comes back, on node 3, while alice keeps sending.
            try await clients.connect("bob", to: three)
            _ = try await clients("reconnected", ["user": "bob"])
            try await sender.value
            let all = sent.value
            #expect(all.count == 500)
            @Sendable func receivedIDs() async throws -> [(content: String, id: String)] {
                let events = try await clients.events("bob-on-2", "message:received") + clients.events("bob", "message:received")
                return events.compactMap { event in
                    guard let content = event["content"]?.string, let id = event["_id"]?.string else { return nil }
                    return (content, id)
                }
            }
            try await eventually("bob to have all 500", timeout: .seconds(60), every: .milliseconds(100)) {
                Set(try await receivedIDs().map(\.id)).isSuperset(of: all.values)
            }
            let received = try await receivedIDs()
            #expect(Set(received.map(\.id)) == Set(all.values), "each message at least once, nothing else")
            let mismatched = received.filter { all[$0.content] != $0.id }
            #expect(mismatched.isEmpty, "a duplicate carries its message's id: \(mismatched.prefix(3))")
            let duplicates = received.count - Set(received.map(\.id)).count

            // The dead node's inbox is gone.
            let info = try ChildProcess(ChatdProcess.binary, arguments: ["queue-info", "--node", "node-2"], environment: one.environment, label: "queue-info")
            let status = await info.wait(timeout: .seconds(20))
            #expect(status == 0 && info.stdout.contains("chatd.node.node-2\tabsent"), "\(info.stdout) \(info.stderr)")
            await info.cleanUp()
            print("crashUnderLoad(\(queueType)): user:offline \(noticed) after the kill; \(received.count) received for 500 sent (\(duplicates) duplicates, same ids)")
        }
    }

    private func conversation(_ one: ChatdProcess, _ two: ChatdProcess, _ clients: ClientDriver) async throws {
        let token = try await one.token("alice")
        let chat = try #require(try await one.http("POST", "/api/chats", token: token, body: ["participants": ["bob"]]).json?["_id"]?.string)
        try await clients.connect("alice", to: one)
        try await clients.connect("bob", to: two)
        // Presence crosses nodes too.
        try await eventually("alice (node 1) to see bob come online on node 2") {
            try await clients.events("alice", "user:online").contains { $0["userId"] == "bob" }
        }

        var ids: [String] = []
        for index in 0..<20 {
            let sent = try await clients.send("alice", chat: chat, "across \(index)")
            ids.append(try #require(sent["messageId"]?.string, "\(sent)"))
        }
        try await eventually("bob (on node 2) to receive all 20 live", timeout: .seconds(15)) { try await clients.received("bob").count == 20 }
        #expect(try await clients.received("bob") == (0..<20).map { "across \($0)" })
        let received = try await clients.events("bob", "message:received")
        #expect(received.allSatisfy { $0["isNew"] == .bool(true) }, "live, not caught up: \(received.prefix(2))")
        #expect(try await FullStackTests.queued(for: "bob", chatd: one) == 0, "nothing went to bob's offline queue")

        // And back.
        _ = try await clients.send("bob", chat: chat, "and back")
        try await eventually("alice (on node 1) to receive the answer live") { try await clients.received("alice") == ["and back"] }

        // Delivery recorded once bob's client confirmed: the receipts say delivered.
        let last = ids.last!
        try await eventually("bob's receipt to say delivered", timeout: .seconds(10)) {
            let receipts = try await one.http("GET", "/api/messages/\(last)/receipts", token: token)
            return receipts.json?["receipts"]?.array?.contains { $0["userId"] == "bob" && $0["status"] == "delivered" } == true
        }
        #expect(one.log.contains("Message forwarded to the recipient's node"))
        #expect(two.log.contains("Message forwarded to the recipient's node"))

        // `chatd queue-info --node` shows a node's inbox: drained, with its reader.
        let info = try ChildProcess(ChatdProcess.binary, arguments: ["queue-info", "--node", "node-2"], environment: one.environment, label: "queue-info")
        let status = await info.wait(timeout: .seconds(20))
        #expect(status == 0 && info.stdout.contains("chatd.node.node-2\tready=0\tconsumers=1"), "\(info.stdout) \(info.stderr)")
        await info.cleanUp()
    }
}
