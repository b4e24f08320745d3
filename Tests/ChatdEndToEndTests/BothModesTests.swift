import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// The black-box scenarios, each run embedded and against the full stack (where users run chatd): the same
/// stock clients, the same HTTP API, the same expectations.
///
/// A full stack takes about twenty seconds to boot on two cores, so the scenarios of one mode share one: each
/// scenario has users of its own (a ``Cast``), so none sees another's chats or presence.
@Suite("chatd in both modes", .serialized)
struct BothModesTests {
    /// The users of one scenario: `a` and `b` share a chat, `c` is a stranger to it.
    struct Cast {
        var a: String
        var b: String
        var c: String

        init(_ prefix: String) {
            (self.a, self.b, self.c) = ("\(prefix)-alice", "\(prefix)-bob", "\(prefix)-carol")
        }
    }

    @Test(
        "The scenarios: a conversation with offline catch-up, the HTTP API, presence between contacts, read marks, typing and the receipts webhook",
        arguments: Mode.allCases
    )
    func scenarios(mode: Mode) async throws {
        try await withDriver { clients in
            try await withWebhookReceiver { receiver in
                let webhook = ["RECEIPTS_WEBHOOK_URL": receiver.url, "RECEIPTS_WEBHOOK_SECRET": Self.webhookSecret]
                try await withStack(mode, environment: webhook) { stack in
                    try await self.conversation(stack, clients, Cast("talk"))
                    try await self.httpAPI(stack, clients, Cast("api"))
                    try await self.presence(stack, clients, Cast("seen"))
                    try await self.readAndTyping(stack, clients, receiver, Cast("read"))
                }
            }
        }
    }

    static let webhookSecret = "webhook-secret-for-the-end-to-end-tests"

    /// Two stock clients: b reads up to the 3rd of 5 messages; a's connection gets one `message:read`, the receipts
    /// show `readAt` on 1 to 3 only, a second `message:read` of the 2nd changes nothing, `GET /api/chats` has the
    /// unread counts and marks; typing reaches a and ends when b disconnects; the webhook receives the delivered and
    /// read events, signed.
    private func readAndTyping(_ stack: Stack, _ clients: ClientDriver, _ receiver: WebhookReceiver, _ cast: Cast) async throws {
        let chatd = stack.chatd
        let (a, b) = (cast.a, cast.b)
        let tokenA = try await chatd.token(a)
        let tokenB = try await chatd.token(b)
        let chat = try #require(try await chatd.http("POST", "/api/chats", token: tokenA, body: ["participants": [.string(b)]]).json?["_id"]?.string)
        try await clients.connect(a, to: chatd)
        try await clients.connect(b, to: chatd)
        var ids: [String] = []
        for index in 1...5 { ids.append(try #require(try await clients.send(a, chat: chat, "read me \(index)")["messageId"]?.string)) }
        try await eventually("\(b) to receive all 5") { try await clients.received(b).count == 5 }

        let ack = try await clients.emit(b, "message:read", ["chatId": .string(chat), "messageId": .string(ids[2])])
        #expect(ack["chatId"] == .string(chat) && ack["messageId"] == .string(ids[2]) && ack["readAt"]?.string != nil, "\(stack.mode): \(ack)")
        try await eventually("\(a) to get b's read mark") { try await clients.events(a, "message:read").count == 1 }
        let told = try #require(try await clients.events(a, "message:read").first)
        #expect(told["userId"] == .string(b) && told["messageId"] == .string(ids[2]) && told["readAt"] == ack["readAt"] && told["chatId"] == .string(chat))
        for (index, id) in ids.enumerated() {
            let receipts = try await chatd.http("GET", "/api/messages/\(id)/receipts", token: tokenA)
            let entry = try #require(receipts.json?["receipts"]?.array?.first { $0["userId"] == .string(b) })
            if index < 3 {
                #expect(entry["readAt"] == ack["readAt"], "\(stack.mode): message \(index + 1): \(entry)")
            } else {
                #expect(entry["readAt"] == .null, "\(stack.mode): message \(index + 1) is not read: \(entry)")
            }
        }
        let again = try await clients.emit(b, "message:read", ["chatId": .string(chat), "messageId": .string(ids[1])])
        #expect(again == ack, "an older mark changes nothing and answers with the mark in force")
        let notInChat = try await clients.emit(b, "message:read", ["chatId": .string(chat), "messageId": "0123456789abcdef01234567"])
        #expect(notInChat["code"] == "message_not_found")
        let badRequest = try await clients.emit(b, "message:read", ["chatId": .string(chat)])
        #expect(badRequest["code"] == "bad_request")
        let listedB = try await chatd.http("GET", "/api/chats", token: tokenB).json?["chats"]?.array?.first { $0["_id"] == .string(chat) }
        #expect(listedB?["unreadCount"] == 2 && listedB?["readUpTo"]?[b] == .string(ids[2]), "\(stack.mode): \(String(describing: listedB))")
        let listedA = try await chatd.http("GET", "/api/chats", token: tokenA).json?["chats"]?.array?.first { $0["_id"] == .string(chat) }
        #expect(listedA?["unreadCount"] == 0, "a's own messages are not unread to a")

        _ = try await clients.emit(b, "typing:start", ["chatId": .string(chat)])
        try await eventually("\(a) to see \(b) typing") { try await clients.events(a, "typing").contains { $0["typing"] == true && $0["userId"] == .string(b) } }
        try await clients("disconnect", ["user": .string(b)])
        try await eventually("\(a) to see \(b) stop typing as they leave") { try await clients.events(a, "typing").contains { $0["typing"] == false } }

        // The webhook: five deliveries to b and one read mark, each once by id, signed with the secret.
        let sent = ids
        await eventually("the webhook to receive the deliveries and the read mark", timeout: .seconds(20)) {
            let events = receiver.acceptedEvents.filter { $0["chatId"] == chat }
            return Set(events.filter { $0["type"] == "delivered" }.compactMap { $0["messageId"] }) == Set(sent)
                && events.contains { $0["type"] == "read" && $0["messageId"] == sent[2] && $0["userId"] == b }
        }
        for request in receiver.requests {
            #expect(request.headers["x-chatd-signature"] == ReceiptSignature.expected(request.body, secret: Self.webhookSecret))
        }
    }

    @Test("After an outage of each service and its return: /readyz all ok, offline catch-up, then live delivery again")
    func afterOutages() async throws {
        try await withDriver { clients in
            try await withStack(.fullStack) { stack in
                for service in Service.allCases {
                    try await self.outage(of: service, stack, clients, Cast("\(service)"))
                }
            }
        }
    }

    /// Two users converse: live delivery, offline messages caught up on `user:reconnected` with `readBy`, live
    /// again after.
    private func conversation(_ stack: Stack, _ clients: ClientDriver, _ cast: Cast) async throws {
        let chatd = stack.chatd
        let (a, b) = (cast.a, cast.b)
        let token = try await chatd.token(a)
        let chat = try #require(try await chatd.http("POST", "/api/chats", token: token, body: ["participants": [.string(b)]]).json?["_id"]?.string)
        try await clients.connect(a, to: chatd)
        try await clients.connect(b, to: chatd)

        let first = try await clients.send(a, chat: chat, "hello")
        #expect(first["messageId"]?.string?.count == 24)
        try await eventually("\(b) to receive it live") { try await clients.received(b) == ["hello"] }
        #expect(try await clients.events(b, "message:received").first?["isNew"] == true)

        try await self.reconnectFlow(stack, clients, cast, chat: chat, contents: ["while you were away 1", "while you were away 2"])

        // Every message of the chat lists b in readBy, as the history shows.
        try await eventually("readBy to include \(b)") {
            let history = try await chatd.http("GET", "/api/chats/\(chat)/messages", token: token)
            let messages = history.json?["messages"]?.array ?? []
            return messages.count == 4 && messages.allSatisfy { message in
                message["readBy"]?.array?.contains { $0["userId"] == .string(b) } == true
            }
        }
        for line in ["User connected", "Message queued for offline user", "User reconnection event received", "Delivered 2 queued messages to \(b)"] {
            #expect(chatd.log.contains(line), "\(stack.mode): missing log line: \(line)")
        }
    }

    /// The HTTP API: chats listed for their participants only, 401/403/404/400, history pages, receipts.
    private func httpAPI(_ stack: Stack, _ clients: ClientDriver, _ cast: Cast) async throws {
        let chatd = stack.chatd
        let (a, b, c) = (cast.a, cast.b, cast.c)
        let tokenA = try await chatd.token(a)
        let tokenB = try await chatd.token(b)
        let tokenC = try await chatd.token(c)
        #expect(try await chatd.http("GET", "/api/chats").status == 401)
        let forged = try await TokenMaker.forged(a)
        let refused = try await chatd.http("GET", "/api/chats", token: forged)
        #expect(refused.status == 401 && refused.json?["error"]?["code"] == "unauthorized")

        let badType = try await chatd.http("POST", "/api/chats", token: tokenA, body: ["participants": .string(b)])
        #expect(badType.status == 400)
        #expect(badType.json?["error"]?["message"]?.string == "'participants' has the wrong type")
        let alone = try await chatd.http("POST", "/api/chats", token: tokenA, body: ["participants": []])
        #expect(alone.status == 400 && alone.json?["error"]?["code"] == "bad_request")

        // b has never connected: they exist from now on.
        let created = try await chatd.http("POST", "/api/chats", token: tokenA, body: ["participants": [.string(b)], "name": "ab"])
        #expect(created.status == 201)
        let chat = try #require(created.json?["_id"]?.string)
        #expect(created.json?["participants"] == .array([.string(a), .string(b)]))
        // Both participants see the chat; someone else does not.
        for token in [tokenA, tokenB] {
            let listed = try await chatd.http("GET", "/api/chats", token: token)
            #expect(listed.status == 200)
            #expect(listed.json?["chats"]?.array?.compactMap { $0["_id"]?.string } == [chat], "\(stack.mode): \(String(describing: listed.json))")
        }
        #expect(try await chatd.http("GET", "/api/chats", token: tokenC).json?["chats"] == [])
        #expect(try await chatd.http("GET", "/api/chats/\(chat)/messages", token: tokenC).status == 403)
        #expect(try await chatd.http("GET", "/api/chats/nope/messages", token: tokenA).status == 404)
        #expect(try await chatd.http("GET", "/api/chats/\(chat)/messages?limit=ten", token: tokenA).status == 400)
        #expect(try await chatd.http("GET", "/api/chats/\(chat)/messages?before=zz", token: tokenA).status == 400)

        try await clients.connect(a, to: chatd)
        try await clients.connect(b, to: chatd)
        var ids: [String] = []
        for index in 0..<25 {
            ids.append(try #require(try await clients.send(a, chat: chat, "m\(index)")["messageId"]?.string))
        }
        // Pages of 10, newest first, without gaps or overlaps.
        var seen: [String] = []
        var before: String?
        for expected in [10, 10, 5] {
            let query = "?limit=10" + (before.map { "&before=\($0)" } ?? "")
            let page = try await chatd.http("GET", "/api/chats/\(chat)/messages\(query)", token: tokenA)
            let messages = page.json?["messages"]?.array ?? []
            #expect(messages.count == expected)
            seen += messages.compactMap { $0["_id"]?.string }
            before = page.json?["nextBefore"]?.string
        }
        #expect(seen == Array(ids.reversed()))
        #expect(before == nil)
        let capped = try await chatd.http("GET", "/api/chats/\(chat)/messages?limit=100000", token: tokenA)
        #expect(capped.json?["messages"]?.array?.count == 25)

        // Receipts: b got the last message.
        try await eventually("\(b) to receive all 25") { try await clients.received(b).count == 25 }
        let last = ids.last!
        try await eventually("\(b)'s receipt to say delivered") {
            let receipts = try await chatd.http("GET", "/api/messages/\(last)/receipts", token: tokenA)
            return receipts.json?["receipts"]?.array?.contains { $0["userId"] == .string(b) && $0["status"] == "delivered" } == true
        }
        #expect(try await chatd.http("GET", "/api/messages/\(last)/receipts", token: tokenC).status == 403)
        #expect(try await chatd.http("GET", "/api/messages/\(last)/receipts").status == 401)
    }

    /// Contacts see each other come and go (`user:online` / `user:offline`); strangers see nothing.
    private func presence(_ stack: Stack, _ clients: ClientDriver, _ cast: Cast) async throws {
        let chatd = stack.chatd
        let (a, b, c) = (cast.a, cast.b, cast.c)
        _ = try #require(try await chatd.http("POST", "/api/chats", token: try await chatd.token(a), body: ["participants": [.string(b)]]).json?["_id"]?.string)
        for user in [a, c] { try await clients.connect(user, to: chatd) }
        try await clients.connect(b, to: chatd)
        try await eventually("\(a) to see \(b) come online") {
            try await clients.events(a, "user:online").contains { $0["userId"] == .string(b) }
        }
        try await clients("disconnect", ["user": .string(b)])
        try await eventually("\(a) to see \(b) go offline") {
            try await clients.events(a, "user:offline").contains { $0["userId"] == .string(b) }
        }
        // c shares no chat with b.
        #expect(try await clients.events(c, "user:online").isEmpty, "\(stack.mode)")
        #expect(try await clients.events(c, "user:offline").isEmpty, "\(stack.mode)")
    }

    /// `service` stops while a and b chat, and comes back: `/readyz` is all ok again, the offline catch-up works
    /// and the next message is live.
    private func outage(of service: Service, _ stack: Stack, _ clients: ClientDriver, _ cast: Cast) async throws {
        let chatd = stack.chatd
        let (a, b) = (cast.a, cast.b)
        let chat = try #require(try await chatd.http("POST", "/api/chats", token: try await chatd.token(a), body: ["participants": [.string(b)]]).json?["_id"]?.string)
        try await clients.connect(a, to: chatd)
        try await clients.connect(b, to: chatd)
        _ = try await clients.send(a, chat: chat, "before")
        try await eventually("\(b) to get the first message") { try await clients.received(b) == ["before"] }

        await stack.stop(service)
        var expected = ["before"]
        switch service {
        case .mongodb:
            // Nothing can be stored: the send is refused, and never delivered later.
            let refused = try await clients.send(a, chat: chat, "during")
            #expect(refused["code"] == "store_unavailable", "\(refused)")
            let ready = try await chatd.http("GET", "/readyz")
            #expect(ready.status == 503 && ready.json?["components"]?["store"] == "down")
        case .rabbitmq, .redis:
            for index in 0..<3 {
                let sent = try await clients.send(a, chat: chat, "during \(index)")
                #expect(sent["messageId"] != nil, "\(service): \(sent)")
                expected.append("during \(index)")
            }
            let component = service == .redis ? "presence" : "queue"
            try await eventually("readyz to say \(component) is degraded") {
                let ready = try await chatd.http("GET", "/readyz")
                return ready.status == 200 && ready.json?["components"]?[component] == "degraded"
            }
            // The adapter names the product in the product's words.
            #expect(chatd.log.contains(service == .redis ? "Redis connection failed, continuing without Redis" : "RabbitMQ connection failed, offline messaging disabled"))
        }
        let sentDuring = expected
        try await eventually("\(b) to get what was sent during the \(service) outage") { try await clients.received(b) == sentDuring }

        try await stack.restart(service)
        try await eventually("readyz to be all ok again after the \(service) outage", timeout: .seconds(20)) {
            let ready = try await chatd.http("GET", "/readyz")
            let components = ready.json?["components"]
            return ready.status == 200 && ["store", "queue", "presence"].allSatisfy { components?[$0] == "ok" }
        }
        if service == .redis, let redis = stack.redis {
            // The node wrote its connections again: both users are present in Redis.
            try await eventually("Redis to know \(a) and \(b) again", timeout: .seconds(15)) {
                let keys = try await redis.cli("KEYS", "*")
                return keys.contains(a) && keys.contains(b)
            }
        }
        // Nothing refused during the outage turns up later.
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await clients.received(b) == sentDuring, "\(service)")
        try await self.reconnectFlow(stack, clients, cast, chat: chat, contents: ["queued after the \(service) outage"])
    }

    /// b goes offline, a sends `contents`, b comes back and emits `user:reconnected`: b gets them in order with
    /// `isNew: false` and themself in `readBy`, a sees b go and come back, and the next message is live.
    private func reconnectFlow(_ stack: Stack, _ clients: ClientDriver, _ cast: Cast, chat: String, contents: [String]) async throws {
        let chatd = stack.chatd
        let (a, b) = (cast.a, cast.b)
        let offlineBefore = try await clients.events(a, "user:offline").count
        try await clients("disconnect", ["user": .string(b)])
        try await eventually("\(a) to see \(b) go offline") {
            try await clients.events(a, "user:offline").count > offlineBefore
        }
        for content in contents {
            #expect(try await clients.send(a, chat: chat, content)["messageId"] != nil)
        }
        let onlineBefore = try await clients.events(a, "user:online").filter { $0["userId"] == .string(b) }.count
        try await clients.connect(b, to: chatd)
        let answer = try await clients("reconnected", ["user": .string(b)])
        #expect(answer["delivered"] == .number(Double(contents.count)), "\(stack.mode): \(answer)")
        let caughtUp = try await clients.events(b, "message:received")
        #expect(caughtUp.compactMap { $0["content"]?.string } == contents)
        #expect(caughtUp.allSatisfy { $0["isNew"] == .bool(false) })
        // The emitted copies already list b as a reader.
        #expect(caughtUp.allSatisfy { $0["readBy"]?.array?.contains { $0["userId"] == .string(b) } == true }, "\(caughtUp)")
        try await eventually("\(a) to see \(b) come back") {
            try await clients.events(a, "user:online").filter { $0["userId"] == .string(b) }.count > onlineBefore
        }
        // Caught up: the next message is live.
        _ = try await clients.send(a, chat: chat, "live again")
        try await eventually("\(b) to get the next message") { try await clients.received(b).last == "live again" }
        let live = try await clients.events(b, "message:received").last
        #expect(live?["isNew"] == true, "in \(stack.mode) mode the message after the catch-up must be live: \(String(describing: live))")
    }
}
