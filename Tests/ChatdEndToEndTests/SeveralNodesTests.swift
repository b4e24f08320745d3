import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// Two chatd processes on one RabbitMQ, one Redis and one MongoDB-wire server, with python-socketio clients on
/// each: what a deployment behind a load balancer sees.
@Suite("chatd on several nodes", .serialized)
struct SeveralNodesEndToEndTests {
    @Test("Users on different nodes talk live: each message arrives at once (isNew), in order, both ways, and is recorded delivered")
    func liveAcrossNodes() async throws {
        try await withDriver { clients in
            try await withMongoServer { mongo in
                try await withRedisServer { redis in
                    try await withRabbitServer { rabbit in
                        let services = FullStackTests.environment(mongo: mongo, rabbit: rabbit, redis: redis)
                        try await withChatd(environment: services.merging(["NODE_ID": "node-1"]) { $1 }) { one in
                            try await withChatd(environment: services.merging(["NODE_ID": "node-2"]) { $1 }) { two in
                                try await self.conversation(one, two, clients)
                            }
                        }
                    }
                }
            }
        }
    }

    private func conversation(_ one: ChatdProcess, _ two: ChatdProcess, _ clients: ClientDriver) async throws {
        // A node's inbox exists once it reads it; before that, forwards to it take the offline path.
        await eventually("both nodes to read their inboxes", timeout: .seconds(20)) {
            one.log.contains("Reading this node's inbox") && two.log.contains("Reading this node's inbox")
        }
        let token = try await one.token("alice")
        let chat = try #require(try await one.http("POST", "/api/chats", token: token, body: ["participants": ["bob"]]).json?["_id"]?.string)
        try await clients.connect("alice", to: one)
        try await clients.connect("bob", to: two)

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
    }
}
