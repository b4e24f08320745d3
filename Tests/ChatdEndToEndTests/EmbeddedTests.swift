import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// chatd with nothing configured: its embedded SQLite file, real python-socketio clients, the HTTP API.
@Suite("chatd embedded")
struct EmbeddedTests {
    @Test("With no configuration chatd serves two clients end to end, and stops cleanly on SIGTERM")
    func twoClients() async throws {
        try await withDriver { clients in
            try await withChatd { chatd in
                #expect(chatd.log.contains("Embedded mode: no RabbitMQ, Redis or MongoDB configured"))
                try await clients.connect("alice", to: chatd)
                try await clients.connect("bob", to: chatd)
                let created = try await chatd.http("POST", "/api/chats", token: try await chatd.token("alice"), body: ["participants": ["bob"]])
                #expect(created.status == 201)
                let chat = try #require(created.json?["_id"]?.string)

                let first = try await clients.send("alice", chat: chat, "hello bob")
                #expect(first["messageId"]?.string?.count == 24)
                try await eventually("bob to receive it live") { try await clients.received("bob") == ["hello bob"] }

                try await clients("disconnect", ["user": "bob"])
                _ = try await clients.send("alice", chat: chat, "while you were away 1")
                _ = try await clients.send("alice", chat: chat, "while you were away 2")
                try await clients.connect("bob", to: chatd)
                let answer = try await clients("reconnected", ["user": "bob"])
                #expect(answer["delivered"] == .number(2))
                let caughtUp = try await clients.events("bob", "message:received")
                #expect(caughtUp.compactMap { $0["content"]?.string } == ["while you were away 1", "while you were away 2"])
                #expect(caughtUp.allSatisfy { $0["isNew"] == .bool(false) })
                // alice saw bob come back.
                try await eventually("alice to get user:online for bob") {
                    try await clients.events("alice", "user:online").contains { $0["userId"] == "bob" }
                }
                // readBy gained bob, as the history shows.
                try await eventually("readBy to include bob") {
                    let history = try await chatd.http("GET", "/api/chats/\(chat)/messages", token: try await chatd.token("alice"))
                    let messages = history.json?["messages"]?.array ?? []
                    return messages.count == 3 && messages.allSatisfy { message in
                        message["readBy"]?.array?.contains { $0["userId"] == "bob" } == true
                    }
                }
                // The product's log lines.
                for line in ["User connected", "Message queued for offline user", "User reconnection event received", "Delivered 2 queued messages to bob"] {
                    #expect(chatd.log.contains(line), "missing log line: \(line)")
                }
                // Metrics count what happened.
                try await eventually("metrics to count three sends") {
                    let metrics = try await Self.text(chatd.url + "/metrics")
                    // One live delivery and one drain went through the engine's observer into the histograms.
                    return metrics.contains("chatd_messages_sent_total 3") && metrics.contains("chatd_connected_sockets 2")
                        && metrics.contains("chatd_drain_duration_seconds_count 1")
                        && metrics.contains("chatd_delivery_latency_seconds_count 1")
                }
                #expect(await chatd.stop() == 0)
                #expect(chatd.log.contains("chatd stopped"))
            }
        }
    }

    @Test("A bad setting stops startup with a message naming the variable; secrets never reach the log")
    func configuration() async throws {
        for (variable, value) in [("PORT", "eighty"), ("LOG_LEVEL", "loud"), ("JWT_SECRET", "short"), ("REDIS_PORT", "-1")] {
            var environment = ["PORT": "0", "PATH": "/usr/bin:/bin"]
            environment[variable] = value
            if variable == "REDIS_PORT" { environment["REDIS_HOST"] = "127.0.0.1" }
            let child = try ChildProcess(ChatdProcess.binary, arguments: ["serve"], environment: environment, label: "chatd-config")
            let status = await child.wait(timeout: .seconds(20))
            #expect(status != nil && status != 0, "\(variable)=\(value) must stop startup")
            #expect(child.stderr.contains(variable), "\(variable): \(child.stderr)")
            await child.cleanUp()
        }
        // A store that cannot be reached: chatd starts, says where it looks (without the password), and is not ready.
        let password = "s3cret-mongo-password"
        try await withChatd(environment: ["MONGODB_URI": "mongodb://chat:\(password)@127.0.0.1:9/chatd?serverSelectionTimeoutMS=300"]) { chatd in
            let ready = try await chatd.http("GET", "/readyz")
            #expect(ready.status == 503)
            #expect(ready.json?["components"]?["store"] == "down")
            #expect(try await chatd.http("GET", "/healthz").status == 200)
            #expect(chatd.log.contains("store: MongoDB at mongodb://chat:***@127.0.0.1:9/chatd"))
            #expect(!chatd.log.contains(password))
            #expect(!chatd.log.contains(ChatdProcess.secret))
        }
    }

    @Test("The public development secret is refused outside embedded development; limits are settings")
    func productionNeedsSecret() async throws {
        let cases: [([String: String], String)] = [
            (["REDIS_HOST": "127.0.0.1"], "JWT_SECRET"),
            (["MONGODB_URI": "mongodb://127.0.0.1:9/chatd"], "JWT_SECRET"),
            (["CHATD_ENV": "production"], "JWT_SECRET"),
            (["CHATD_ENV": "staging"], "CHATD_ENV"),
            (["JWT_MAX_TTL": "forever"], "JWT_MAX_TTL"),
            (["SEND_RATE_PER_USER": "-3"], "SEND_RATE_PER_USER"),
            (["MAX_CONNECTIONS_PER_USER": "0"], "MAX_CONNECTIONS_PER_USER"),
            (["RECEIPTS_WEBHOOK_URL": "ftp://hooks.example.com/chatd"], "RECEIPTS_WEBHOOK_URL"),
            (["RECEIPTS_WEBHOOK_URL": "hooks.example.com/chatd"], "RECEIPTS_WEBHOOK_URL"),
            (["TYPING_TTL_MS": "soon"], "TYPING_TTL_MS"),
            (["ENCRYPTION_KEY": Data(count: 16).base64EncodedString(), "ENCRYPTION_KEY_ID": "k1"], "ENCRYPTION_KEY"),
            (["ENCRYPTION_KEY": "not base64!", "ENCRYPTION_KEY_ID": "k1"], "ENCRYPTION_KEY"),
            (["ENCRYPTION_KEY": Data(count: 32).base64EncodedString()], "ENCRYPTION_KEY_ID"),
            (["ENCRYPTION_SCOPE": "some"], "ENCRYPTION_SCOPE"),
        ]
        for (extra, variable) in cases {
            var environment = ["PORT": "0", "PATH": "/usr/bin:/bin"]
            environment.merge(extra) { $1 }
            let child = try ChildProcess(ChatdProcess.binary, arguments: ["serve"], environment: environment, label: "chatd-config")
            let status = await child.wait(timeout: .seconds(20))
            #expect(status != nil && status != 0, "\(extra) must stop startup")
            #expect(child.stderr.contains(variable), "\(extra): \(child.stderr)")
            await child.cleanUp()
        }
        // Embedded development still starts without a secret, and says so.
        try await withChatd(environment: ["JWT_SECRET": ""]) { chatd in
            #expect(chatd.log.contains("JWT_SECRET is not set"))
        }
    }

    @Test("CONNECT_TIMEOUT_MS closes a session that never sends its Socket.IO CONNECT")
    func connectTimeoutSetting() async throws {
        try await withChatd(environment: ["CONNECT_TIMEOUT_MS": "300"]) { chatd in
            let text = try await Self.text(chatd.url + "/socket.io/?EIO=4&transport=polling")
            guard let range = text.range(of: #""sid":"([^"]+)""#, options: .regularExpression) else {
                Issue.record("no sid in \(text)")
                return
            }
            let sid = text[range].dropFirst(7).dropLast()
            try await Task.sleep(for: .milliseconds(1200))
            let poll = try await chatd.http("GET", "/socket.io/?EIO=4&transport=polling&sid=\(sid)")
            #expect(poll.status == 400, "closed after the connect timeout: \(poll.status) \(String(describing: poll.json))")
        }
    }

    @Test("With only Redis configured the store and the queue are the node's SQLite file; with IN_MEMORY they are in memory; the startup lines say which")
    func storeIsAnnounced() async throws {
        try await withChatd(environment: ["REDIS_HOST": "127.0.0.1", "REDIS_PORT": "9"]) { chatd in
            #expect(chatd.log.contains("store: SQLite at \(chatd.dataDirectory.path)/chatd.sqlite (synchronous normal)"))
            #expect(chatd.log.contains("queue: SQLite at \(chatd.dataDirectory.path)/chatd.sqlite"))
            let health = try await chatd.http("GET", "/healthz")
            #expect(health.status == 200)
        }
        try await withChatd(environment: ["REDIS_HOST": "127.0.0.1", "REDIS_PORT": "9", "IN_MEMORY": "true"]) { chatd in
            #expect(chatd.log.contains("The message store is in memory"))
            #expect(chatd.log.contains("store: in memory: chats and messages are lost when chatd stops"))
            #expect(!FileManager.default.fileExists(atPath: chatd.dataDirectory.path), "nothing written to DATA_DIR")
        }
    }

    static func text(_ url: String) async throws -> String {
        let (data, _) = try await URLSession.shared.data(from: URL(string: url)!)
        return String(decoding: data, as: UTF8.self)
    }
}

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

import ChatTransport

enum TokenMaker {
    /// A well-formed token signed with another secret.
    static func forged(_ user: String) async throws -> String {
        let other = try await TokenAuthenticator(secret: "not-the-server-secret-0123456789-abcdef")
        return try await other.token(for: User(id: UserID(user), username: user), lifetime: .seconds(600))
    }
}
