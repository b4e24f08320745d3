import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// The black-box scenarios, each run embedded and against the full stack (where users run chatd): the same
/// stock clients, the same HTTP API, the same expectations.
@Suite("chatd in both modes", .serialized)
struct BothModesTests {
    @Test("Two users converse: live delivery, offline messages caught up on user:reconnected with readBy, live again after", arguments: Mode.allCases)
    func conversation(mode: Mode) async throws {
        try await withDriver { clients in
            try await withStack(mode) { stack in
                let chatd = stack.chatd
                let alice = try await chatd.token("alice")
                let chat = try #require(try await chatd.http("POST", "/api/chats", token: alice, body: ["participants": ["bob"]]).json?["_id"]?.string)
                try await clients.connect("alice", to: chatd)
                try await clients.connect("bob", to: chatd)

                let first = try await clients.send("alice", chat: chat, "hello bob")
                #expect(first["messageId"]?.string?.count == 24)
                try await eventually("bob to receive it live") { try await clients.received("bob") == ["hello bob"] }
                #expect(try await clients.events("bob", "message:received").first?["isNew"] == true)

                try await self.reconnectFlow(clients: clients, stack: stack, chat: chat, contents: ["while you were away 1", "while you were away 2"])

                // Every message of the chat lists bob in readBy, as the history shows.
                try await eventually("readBy to include bob") {
                    let history = try await chatd.http("GET", "/api/chats/\(chat)/messages", token: alice)
                    let messages = history.json?["messages"]?.array ?? []
                    return messages.count == 4 && messages.allSatisfy { message in
                        message["readBy"]?.array?.contains { $0["userId"] == "bob" } == true
                    }
                }
                for line in ["User connected", "Message queued for offline user", "User reconnection event received", "Delivered 2 queued messages to bob"] {
                    #expect(chatd.log.contains(line), "missing log line: \(line)")
                }
            }
        }
    }

    @Test("The HTTP API: chats listed for their participants only, 401/403/404/400, history pages, receipts", arguments: Mode.allCases)
    func httpAPI(mode: Mode) async throws {
        try await withDriver { clients in
            try await withStack(mode) { stack in
                let chatd = stack.chatd
                let alice = try await chatd.token("alice")
                let bob = try await chatd.token("bob")
                let carol = try await chatd.token("carol")
                #expect(try await chatd.http("GET", "/api/chats").status == 401)
                let forged = try await TokenMaker.forged("alice")
                let refused = try await chatd.http("GET", "/api/chats", token: forged)
                #expect(refused.status == 401 && refused.json?["error"]?["code"] == "unauthorized")

                let badType = try await chatd.http("POST", "/api/chats", token: alice, body: ["participants": "bob"])
                #expect(badType.status == 400)
                #expect(badType.json?["error"]?["message"]?.string == "'participants' has the wrong type")
                let alone = try await chatd.http("POST", "/api/chats", token: alice, body: ["participants": []])
                #expect(alone.status == 400 && alone.json?["error"]?["code"] == "bad_request")

                // bob has never connected: he exists from now on.
                let created = try await chatd.http("POST", "/api/chats", token: alice, body: ["participants": ["bob"], "name": "ab"])
                #expect(created.status == 201)
                let chat = try #require(created.json?["_id"]?.string)
                #expect(created.json?["participants"] == ["alice", "bob"])
                // Both participants see the chat; someone else does not.
                for token in [alice, bob] {
                    let listed = try await chatd.http("GET", "/api/chats", token: token)
                    #expect(listed.status == 200)
                    #expect(listed.json?["chats"]?.array?.compactMap { $0["_id"]?.string } == [chat], "\(String(describing: listed.json))")
                }
                #expect(try await chatd.http("GET", "/api/chats", token: carol).json?["chats"] == [])
                #expect(try await chatd.http("GET", "/api/chats/\(chat)/messages", token: carol).status == 403)
                #expect(try await chatd.http("GET", "/api/chats/nope/messages", token: alice).status == 404)
                #expect(try await chatd.http("GET", "/api/chats/\(chat)/messages?limit=ten", token: alice).status == 400)
                #expect(try await chatd.http("GET", "/api/chats/\(chat)/messages?before=zz", token: alice).status == 400)

                try await clients.connect("alice", to: chatd)
                try await clients.connect("bob", to: chatd)
                var ids: [String] = []
                for index in 0..<25 {
                    ids.append(try #require(try await clients.send("alice", chat: chat, "m\(index)")["messageId"]?.string))
                }
                // Pages of 10, newest first, without gaps or overlaps.
                var seen: [String] = []
                var before: String?
                for expected in [10, 10, 5] {
                    let query = "?limit=10" + (before.map { "&before=\($0)" } ?? "")
                    let page = try await chatd.http("GET", "/api/chats/\(chat)/messages\(query)", token: alice)
                    let messages = page.json?["messages"]?.array ?? []
                    #expect(messages.count == expected)
                    seen += messages.compactMap { $0["_id"]?.string }
                    before = page.json?["nextBefore"]?.string
                }
                #expect(seen == Array(ids.reversed()))
                #expect(before == nil)
                let capped = try await chatd.http("GET", "/api/chats/\(chat)/messages?limit=100000", token: alice)
                #expect(capped.json?["messages"]?.array?.count == 25)

                // Receipts: bob got the last message.
                try await eventually("bob to receive all 25") { try await clients.received("bob").count == 25 }
                let last = ids.last!
                try await eventually("bob's receipt to say delivered") {
                    let receipts = try await chatd.http("GET", "/api/messages/\(last)/receipts", token: alice)
                    return receipts.json?["receipts"]?.array?.contains { $0["userId"] == "bob" && $0["status"] == "delivered" } == true
                }
                #expect(try await chatd.http("GET", "/api/messages/\(last)/receipts", token: carol).status == 403)
                #expect(try await chatd.http("GET", "/api/messages/\(last)/receipts").status == 401)
            }
        }
    }

    @Test("Contacts see each other come and go (user:online / user:offline); strangers see nothing", arguments: Mode.allCases)
    func presence(mode: Mode) async throws {
        try await withDriver { clients in
            try await withStack(mode) { stack in
                let chatd = stack.chatd
                let alice = try await chatd.token("alice")
                _ = try #require(try await chatd.http("POST", "/api/chats", token: alice, body: ["participants": ["bob"]]).json?["_id"]?.string)
                for user in ["alice", "dave"] { try await clients.connect(user, to: chatd) }
                try await clients.connect("bob", to: chatd)
                try await eventually("alice to see bob come online") {
                    try await clients.events("alice", "user:online").contains { $0["userId"] == "bob" }
                }
                try await clients("disconnect", ["user": "bob"])
                try await eventually("alice to see bob go offline") {
                    try await clients.events("alice", "user:offline").contains { $0["userId"] == "bob" }
                }
                // dave shares no chat with bob.
                #expect(try await clients.events("dave", "user:online").isEmpty)
                #expect(try await clients.events("dave", "user:offline").isEmpty)
            }
        }
    }

    @Test("After an outage of each service and its return: /readyz all ok, offline catch-up, then live delivery again", arguments: Service.allCases)
    func afterOutage(service: Service) async throws {
        try await withDriver { clients in
            try await withStack(.fullStack) { stack in
                let chatd = stack.chatd
                let alice = try await chatd.token("alice")
                let chat = try #require(try await chatd.http("POST", "/api/chats", token: alice, body: ["participants": ["bob"]]).json?["_id"]?.string)
                try await clients.connect("alice", to: chatd)
                try await clients.connect("bob", to: chatd)
                _ = try await clients.send("alice", chat: chat, "before")
                try await eventually("bob to get the first message") { try await clients.received("bob") == ["before"] }

                await stack.stop(service)
                var expected = ["before"]
                switch service {
                case .mongodb:
                    // Nothing can be stored: the send is refused, and never delivered later.
                    let refused = try await clients.send("alice", chat: chat, "during")
                    #expect(refused["code"] == "store_unavailable", "\(refused)")
                    let ready = try await chatd.http("GET", "/readyz")
                    #expect(ready.status == 503 && ready.json?["components"]?["store"] == "down")
                case .rabbitmq, .redis:
                    for index in 0..<3 {
                        let sent = try await clients.send("alice", chat: chat, "during \(index)")
                        #expect(sent["messageId"] != nil, "\(sent)")
                        expected.append("during \(index)")
                    }
                    #expect(chatd.log.contains(service == .redis ? "Redis connection failed, continuing without Redis" : "RabbitMQ connection failed, offline messaging disabled"))
                    let component = service == .redis ? "presence" : "queue"
                    try await eventually("readyz to say \(component) is degraded") {
                        let ready = try await chatd.http("GET", "/readyz")
                        return ready.status == 200 && ready.json?["components"]?[component] == "degraded"
                    }
                }
                let sentDuring = expected
                try await eventually("bob to get what was sent during the outage") { try await clients.received("bob") == sentDuring }

                try await stack.restart(service)
                try await eventually("readyz to be all ok again", timeout: .seconds(20)) {
                    let ready = try await chatd.http("GET", "/readyz")
                    let components = ready.json?["components"]
                    return ready.status == 200 && ["store", "queue", "presence"].allSatisfy { components?[$0] == "ok" }
                }
                if service == .redis, let redis = stack.redis {
                    // The node wrote its connections again: both users are present in Redis.
                    try await eventually("Redis to know alice and bob again", timeout: .seconds(15)) {
                        let keys = try redis.cli("KEYS", "*")
                        return keys.contains("alice") && keys.contains("bob")
                    }
                }
                // Nothing refused during the outage turns up later.
                try await Task.sleep(for: .milliseconds(300))
                #expect(try await clients.received("bob") == sentDuring)
                try await self.reconnectFlow(clients: clients, stack: stack, chat: chat, contents: ["queued after the \(service) outage"])
            }
        }
    }

    /// bob goes offline, alice sends `contents`, bob comes back and emits `user:reconnected`: he gets them in order
    /// with `isNew: false` and himself in `readBy`, alice sees him go and come back, and the next message is live.
    private func reconnectFlow(clients: ClientDriver, stack: Stack, chat: String, contents: [String]) async throws {
        let chatd = stack.chatd
        let offlineBefore = try await clients.events("alice", "user:offline").count
        try await clients("disconnect", ["user": "bob"])
        try await eventually("alice to see bob go offline") {
            try await clients.events("alice", "user:offline").count > offlineBefore
        }
        for content in contents {
            #expect(try await clients.send("alice", chat: chat, content)["messageId"] != nil)
        }
        let onlineBefore = try await clients.events("alice", "user:online").filter { $0["userId"] == "bob" }.count
        try await clients.connect("bob", to: chatd)
        let answer = try await clients("reconnected", ["user": "bob"])
        #expect(answer["delivered"] == .number(Double(contents.count)), "\(answer)")
        let caughtUp = try await clients.events("bob", "message:received")
        #expect(caughtUp.compactMap { $0["content"]?.string } == contents)
        #expect(caughtUp.allSatisfy { $0["isNew"] == .bool(false) })
        // The emitted copies already list bob as a reader.
        #expect(caughtUp.allSatisfy { $0["readBy"]?.array?.contains { $0["userId"] == "bob" } == true }, "\(caughtUp)")
        try await eventually("alice to see bob come back") {
            try await clients.events("alice", "user:online").filter { $0["userId"] == "bob" }.count > onlineBefore
        }
        // Caught up: the next message is live.
        _ = try await clients.send("alice", chat: chat, "live again")
        try await eventually("bob to get the next message") { try await clients.received("bob").last == "live again" }
        let live = try await clients.events("bob", "message:received").last
        #expect(live?["isNew"] == true, "in \(stack.mode) mode the message after the catch-up must be live: \(String(describing: live))")
    }
}
