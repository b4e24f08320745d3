import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// Two chatd processes on one RabbitMQ, one Redis and one MongoDB-wire server, with python-socketio clients on
/// each: what a deployment behind a load balancer sees.
@Suite("chatd on several nodes", .serialized)
struct SeveralNodesEndToEndTests {
    /// Runs `body` with nodes `node-1` and `node-2` on one full stack, once both read their inboxes.
    private func withTwoNodes(_ body: (ChatdProcess, ChatdProcess, RabbitTestServer, ClientDriver) async throws -> Void) async throws {
        try await withDriver { clients in
            try await withMongoServer { mongo in
                try await withRedisServer { redis in
                    try await withRabbitServer { rabbit in
                        let services = FullStackTests.environment(mongo: mongo, rabbit: rabbit, redis: redis)
                        try await withChatd(environment: services.merging(["NODE_ID": "node-1"]) { $1 }) { one in
                            try await withChatd(environment: services.merging(["NODE_ID": "node-2"]) { $1 }) { two in
                                // A node's inbox exists once it reads it; before that, forwards to it take the
                                // offline path.
                                await eventually("both nodes to read their inboxes", timeout: .seconds(20)) {
                                    one.log.contains("Reading this node's inbox") && two.log.contains("Reading this node's inbox")
                                }
                                try await body(one, two, rabbit, clients)
                            }
                        }
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
        try await self.withTwoNodes { one, two, _, clients in
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

            try await two.restart()
            await eventually("node 2 to read its inbox again", timeout: .seconds(20)) { two.child.stderr.contains("Reading this node's inbox") }
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
