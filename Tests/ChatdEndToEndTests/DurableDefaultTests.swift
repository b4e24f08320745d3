import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// chatd with nothing configured keeps everything in its DATA_DIR: a crash loses nothing.
@Suite("chatd's durable default", .serialized)
struct DurableDefaultTests {
    @Test("kill -9 with 1,000 messages queued for an offline user: after a restart on the same DATA_DIR each arrives once, in order; chats and history survive; another restart delivers nothing twice")
    func crashLosesNothing() async throws {
        try await withDriver { clients in
            try await withChatd { chatd in
                #expect(chatd.log.contains("kept in \(chatd.dataDirectory.path)/chatd.sqlite and survive a restart or a crash"))
                let token = try await chatd.token("alice")
                let chat = try #require(try await chatd.http("POST", "/api/chats", token: token, body: ["participants": ["bob"]]).json?["_id"]?.string)
                try await clients.connect("alice", to: chatd)
                // bob connected once (so he is known), and is offline now.
                try await clients.connect("bob", to: chatd)
                try await clients("disconnect", ["user": "bob"])
                var ids: [String] = []
                for index in 0..<1000 {
                    let sent = try await clients.send("alice", chat: chat, "m\(index)")
                    ids.append(try #require(sent["messageId"]?.string, "\(sent)"))
                }

                await chatd.crash()
                try await chatd.restart()
                try await clients.connect("bob", to: chatd)
                let answer = try await clients("reconnected", ["user": "bob"])
                #expect(answer["delivered"] == .number(1000), "\(answer)")
                let received = try await clients.events("bob", "message:received")
                #expect(received.compactMap { $0["_id"]?.string } == ids, "every message, once, in order")
                #expect(received.allSatisfy { $0["isNew"] == .bool(false) })

                // The chat and its history came back too.
                let chats = try await chatd.http("GET", "/api/chats", token: token)
                #expect(chats.json?["chats"]?.array?.compactMap { $0["_id"]?.string } == [chat], "\(String(describing: chats.json))")
                let history = try await chatd.http("GET", "/api/chats/\(chat)/messages?limit=5", token: token)
                #expect(history.json?["messages"]?.array?.first?["_id"]?.string == ids.last, "\(String(describing: history.json))")

                // Deliveries are recorded before the next crash: nothing comes twice.
                let last = try #require(ids.last)
                try await eventually("bob's receipt for the last message", timeout: .seconds(15)) {
                    let receipts = try await chatd.http("GET", "/api/messages/\(last)/receipts", token: token)
                    return receipts.json?["receipts"]?.array?.contains { $0["userId"] == "bob" && $0["status"] == "delivered" } == true
                }
                try await clients("disconnect", ["user": "bob"])
                await chatd.crash()
                try await chatd.restart()
                try await clients.connect("bob", to: chatd)
                let again = try await clients("reconnected", ["user": "bob"])
                #expect(again["delivered"] == .number(0), "\(again)")
                #expect(try await clients.received("bob").isEmpty)
            }
        }
    }

    @Test("Receipts webhook down while chatd is killed and restarted: once both are back, every delivered and read event arrives, by its id")
    func webhookOutboxSurvivesRestart() async throws {
        // A port that was free a moment ago: nothing listens there until the receiver starts on it again.
        let port = try await withWebhookReceiver { $0.port }
        let secret = "webhook-secret-for-the-restart-test"
        let environment = ["RECEIPTS_WEBHOOK_URL": "http://127.0.0.1:\(port)/hooks/chatd", "RECEIPTS_WEBHOOK_SECRET": secret]
        try await withDriver { clients in
            try await withChatd(environment: environment) { chatd in
                let token = try await chatd.token("alice")
                let chat = try #require(try await chatd.http("POST", "/api/chats", token: token, body: ["participants": ["bob"]]).json?["_id"]?.string)
                try await clients.connect("alice", to: chatd)
                try await clients.connect("bob", to: chatd)
                var ids: [String] = []
                for index in 0..<20 { ids.append(try #require(try await clients.send("alice", chat: chat, "m\(index)")["messageId"]?.string)) }
                try await eventually("bob to receive all 20") { try await clients.received("bob").count == 20 }
                _ = try await clients.emit("bob", "message:read", ["chatId": .string(chat), "messageId": .string(ids[19])])
                // All 21 events wait in the outbox (the webhook keeps failing to reach the receiver).
                try await eventually("the outbox to hold 21 events", timeout: .seconds(20), every: .milliseconds(100)) {
                    let metrics = try await EmbeddedTests.text(chatd.url + "/metrics")
                    return metrics.split(separator: "\n").contains { $0.hasPrefix("chatd_webhook_outbox_depth ") && Double($0.split(separator: " ").last ?? "") == 21 }
                }
                // The depth is recorded before each attempt; the attempt fails at its 10 s timeout (async-http-client
                // keeps retrying a refused connection until the request's deadline), then the warning is logged.
                await eventually("the webhook's failure to be logged", timeout: .seconds(30), every: .milliseconds(100)) {
                    chatd.log.contains("Receipts webhook unreachable or failing; events wait in the outbox and are retried")
                }

                await chatd.crash()
                try await chatd.restart()
                let sent = ids
                try await withWebhookReceiver(port: port) { receiver in
                    await eventually("every event to arrive after the restart", timeout: .seconds(30), every: .milliseconds(50)) {
                        let events = receiver.acceptedEvents
                        return Set(events.filter { $0["type"] == "delivered" }.compactMap { $0["messageId"] }) == Set(sent)
                            && events.contains { $0["type"] == "read" && $0["messageId"] == sent[19] }
                    }
                    #expect(Set(receiver.acceptedEvents.compactMap { $0["id"] }).count == 21, "21 events, each with its own id")
                    #expect(receiver.requests.allSatisfy { $0.headers["x-chatd-signature"] == ReceiptSignature.expected($0.body, secret: secret) })
                }
            }
        }
    }

    @Test("MongoDB for the store and the embedded file for the queue: a kill -9 loses nothing queued for an offline user")
    func mongoStoreWithEmbeddedQueue() async throws {
        try await withDriver { clients in
            try await withMongoServer { mongo in
                try await withChatd(environment: FullStackTests.environment(mongo: mongo)) { chatd in
                    #expect(chatd.log.contains("store: MongoDB at"))
                    #expect(chatd.log.contains("queue: SQLite at \(chatd.dataDirectory.path)/chatd.sqlite"))
                    let token = try await chatd.token("alice")
                    let chat = try #require(try await chatd.http("POST", "/api/chats", token: token, body: ["participants": ["bob"]]).json?["_id"]?.string)
                    try await clients.connect("alice", to: chatd)
                    var ids: [String] = []
                    for index in 0..<50 {
                        ids.append(try #require(try await clients.send("alice", chat: chat, "q\(index)")["messageId"]?.string))
                    }
                    #expect(chatd.log.contains("Message queued for offline user"))
                    await chatd.crash()
                    try await chatd.restart()
                    try await clients.connect("bob", to: chatd)
                    let answer = try await clients("reconnected", ["user": "bob"])
                    #expect(answer["delivered"] == .number(50), "\(answer)")
                    #expect(try await clients.events("bob", "message:received").compactMap { $0["_id"]?.string } == ids, "each once, in order")
                    // From the queue, which survived: the store's catch-up (the net under a lost queue) found nothing.
                    #expect(!chatd.child.stderr.contains("Caught up messages from the store that the queue did not hold"))
                }
            }
        }
    }

    @Test("SIGTERM during a drain: what the client had not confirmed is delivered after the restart")
    func stopDuringDrain() async throws {
        try await withDriver { clients in
            try await withChatd { chatd in
                let token = try await chatd.token("alice")
                let chat = try #require(try await chatd.http("POST", "/api/chats", token: token, body: ["participants": ["bob"]]).json?["_id"]?.string)
                try await clients.connect("alice", to: chatd)
                var ids: [String] = []
                for index in 0..<200 {
                    ids.append(try #require(try await clients.send("alice", chat: chat, "d\(index)")["messageId"]?.string))
                }
                // bob acknowledges slowly: the drain takes seconds, and chatd is stopped in the middle of it.
                try await clients.connect("bob", to: chatd, ackDelayMs: 20)
                _ = try await clients("reconnected", ["user": "bob", "wait": false])
                try await eventually("bob to be part way through", timeout: .seconds(20)) { try await clients.received("bob").count >= 20 }
                #expect(await chatd.stop() == 0)
                let first = try await clients.events("bob", "message:received").compactMap { $0["_id"]?.string }
                #expect(first.count < 200, "stopped mid-drain (\(first.count) delivered)")

                try await chatd.restart()
                try await clients.connect("bob", to: chatd)
                _ = try await clients("reconnected", ["user": "bob"])
                let second = try await clients.events("bob", "message:received").compactMap { $0["_id"]?.string }
                #expect(Set(first + second) == Set(ids), "every message at least once")
                let rest = ids.filter { !first.contains($0) }
                #expect(second.filter { !first.contains($0) } == rest, "the rest, in order, after the restart")
            }
        }
    }
}
