import ChatBrokerAMQP
import ChatDomain
import ChatScenarioKit
import ChatStoreMongo
import Foundation
import Testing

/// Encryption at rest, black box: with a key set, a unique marker sent in a message appears nowhere at rest (the
/// SQLite file, MongoDB, the RabbitMQ queue, chatd's log) while the recipient and the history read it; after a
/// rotation and `chatd reencrypt` the old key can go.
@Suite("Encryption at rest, end to end", .serialized)
struct EncryptionEndToEndTests {
    static let key1 = Data((0..<32).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }).base64EncodedString()
    static let key2 = Data((0..<32).map { UInt8(truncatingIfNeeded: $0 * 13 + 5) }).base64EncodedString()

    @Test("No plaintext at rest in any mode; the recipient and the history read it; rotate, reencrypt, retire the old key", arguments: Mode.allCases)
    func noPlaintextAtRest(mode: Mode) async throws {
        let marker = "marker-\(UUID().uuidString.prefix(12))"
        let environment = ["ENCRYPTION_KEY": Self.key1, "ENCRYPTION_KEY_ID": "k1"]
        try await withDriver { clients in
            try await withStack(mode, environment: environment) { stack in
                let chatd = stack.chatd
                #expect(chatd.log.contains("Encryption at rest on: AES-256-GCM with key k1 for every chat"))
                let token = try await chatd.token("alice")
                let created = try await chatd.http("POST", "/api/chats", token: token, body: ["participants": ["bob"]])
                #expect(created.json?["encrypted"] == true, "every chat is sealed with ENCRYPTION_SCOPE=all")
                let chat = try #require(created.json?["_id"]?.string)
                try await clients.connect("alice", to: chatd)
                try await clients.connect("bob", to: chatd)
                _ = try await clients.send("alice", chat: chat, "live \(marker)")
                try await eventually("bob to read the live message") { try await clients.received("bob") == ["live \(marker)"] }
                // bob goes offline: the next one waits in the queue.
                try await clients("disconnect", ["user": "bob"])
                let queued = try #require(try await clients.send("alice", chat: chat, "queued \(marker)")["messageId"]?.string)

                // At rest: nothing holds the marker.
                switch mode {
                case .embedded:
                    var sealedSomewhere = false
                    for file in try FileManager.default.contentsOfDirectory(atPath: chatd.dataDirectory.path) {
                        let bytes = try Data(contentsOf: chatd.dataDirectory.appendingPathComponent(file))
                        #expect(bytes.range(of: Data(marker.utf8)) == nil, "\(file) holds the marker")
                        sealedSomewhere = sealedSomewhere || bytes.range(of: Data("chatd-sealed:v1:k1:".utf8)) != nil
                    }
                    #expect(sealedSomewhere, "the messages are in the file (or its log), sealed")
                case .fullStack:
                    let mongo = try #require(stack.mongo)
                    let raw = try mongo.makeStore()
                    let stored = try await raw.storedMessages(after: nil, limit: 100)
                    #expect(stored.count == 2)
                    #expect(stored.allSatisfy { $0.content.hasPrefix("chatd-sealed:v1:k1:") && !$0.content.contains(marker) })
                    let rabbit = try #require(stack.rabbit)
                    // Read bob's queue without acknowledging (the entries go back when the consumer closes).
                    let consumer = try await rabbit.makeQueue().consumer(for: "bob", prefetch: 10)
                    let delivery = try #require(try await consumer.next())
                    #expect(delivery.entry.message.id.hexString == queued)
                    #expect(delivery.entry.message.content.hasPrefix("chatd-sealed:v1:k1:") && !delivery.entry.message.content.contains(marker))
                    await consumer.close()
                }

                try await clients.connect("bob", to: chatd)
                _ = try await clients("reconnected", ["user": "bob"])
                #expect(try await clients.received("bob") == ["queued \(marker)"], "the offline message, opened")
                let history = try await chatd.http("GET", "/api/chats/\(chat)/messages", token: token)
                #expect(history.json?["messages"]?.array?.compactMap { $0["content"]?.string } == ["queued \(marker)", "live \(marker)"])
                #expect(!chatd.log.contains(marker), "chatd's log holds the marker")

                // Rotation: k2 is the current key, k1 still readable; reencrypt; then k1 goes.
                let rotated = ["ENCRYPTION_KEY": Self.key2, "ENCRYPTION_KEY_ID": "k2", "ENCRYPTION_OLD_KEYS": "k1:\(Self.key1)"]
                if mode == .embedded { _ = await chatd.stop() }  // the embedded file belongs to one process
                let reencrypt = try ChildProcess(
                    ChatdProcess.binary,
                    arguments: ["reencrypt", "--batch", "1"],
                    environment: chatd.environment.merging(rotated) { $1 },
                    label: "chatd-reencrypt"
                )
                let status = await reencrypt.wait(timeout: .seconds(60))
                #expect(status == 0, "reencrypt: \(reencrypt.stderr)")
                #expect(reencrypt.stdout.contains("re-sealed 2 of 2 messages under key k2"), "\(reencrypt.stdout)")
                #expect(reencrypt.stderr.contains("reencrypt: 1 messages read, 1 re-sealed"), "progress on stderr: \(reencrypt.stderr)")
                await reencrypt.cleanUp()

                try await chatd.restart(changing: ["ENCRYPTION_KEY": Self.key2, "ENCRYPTION_KEY_ID": "k2", "ENCRYPTION_OLD_KEYS": nil])
                let after = try await chatd.http("GET", "/api/chats/\(chat)/messages", token: token)
                #expect(after.status == 200 && after.json?["messages"]?.array?.compactMap { $0["content"]?.string } == ["queued \(marker)", "live \(marker)"])
                #expect(!chatd.log.contains(marker))
            }
        }
    }

    @Test("Without the key a sealed message is reported, never shown: history leaves it out, receipts say message_unreadable")
    func unknownKeyIsReported() async throws {
        try await withDriver { clients in
          try await withChatd(environment: ["ENCRYPTION_KEY": Self.key1, "ENCRYPTION_KEY_ID": "k1"]) { chatd in
            let token = try await chatd.token("alice")
            let chat = try #require(try await chatd.http("POST", "/api/chats", token: token, body: ["participants": ["bob"]]).json?["_id"]?.string)
            try await clients.connect("alice", to: chatd)
            let id = try #require(try await clients.send("alice", chat: chat, "sealed under k1")["messageId"]?.string)
            _ = await chatd.stop()
            try await chatd.restart(changing: ["ENCRYPTION_KEY": Self.key2, "ENCRYPTION_KEY_ID": "k2"])
            let history = try await chatd.http("GET", "/api/chats/\(chat)/messages", token: token)
            #expect(history.status == 200 && history.json?["messages"]?.array?.isEmpty == true, "\(String(describing: history.json))")
            let receipts = try await chatd.http("GET", "/api/messages/\(id)/receipts", token: token)
            #expect(receipts.status == 500 && receipts.json?["error"]?["code"] == "message_unreadable", "\(String(describing: receipts.json))")
            #expect(receipts.json?["error"]?["message"]?.string?.contains("'k1'") == true)
            #expect(chatd.log.contains("Stored message cannot be opened; it is not delivered or shown until its key is configured"))
          }
        }
    }
}
