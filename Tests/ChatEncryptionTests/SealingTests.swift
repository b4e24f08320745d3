import ChatDomain
@testable import ChatEncryption
import ChatScenarioKit
import Foundation
import Logging
import Testing

@Suite("Encryption at rest")
struct SealingTests {
    static let key1 = Data((0..<32).map { UInt8($0) })
    static let key2 = Data((0..<32).map { UInt8(255 - $0) })

    static func sealer(_ current: (String, Data) = ("k1", key1), older: [(String, Data)] = []) throws -> AESGCMSealer {
        try AESGCMSealer(current: (current.0, current.1), older: older.map { (id: $0.0, key: $0.1) })
    }

    static func message(_ content: String = "the marker 7f3a is secret", chat: ChatID = "chat-ab", attachments: [JSONValue] = []) -> Message {
        Message(id: MessageIDGenerator().next(), chatID: chat, senderID: "alice", content: content, attachments: attachments, createdAt: Date())
    }

    @Test("Round trip: content (and attachments) sealed under the current key, opened back; a fresh nonce each time")
    func roundTrip() throws {
        let sealing = MessageSealing(sealer: try Self.sealer())
        for message in [Self.message(), Self.message(attachments: [.object(["url": .string("https://x/7f3a")]), .number(3)])] {
            let sealed = try sealing.seal(message)
            #expect(sealed.content.hasPrefix("chatd-sealed:v1:k1:"))
            #expect(!sealed.content.contains("7f3a") && sealed.attachments.isEmpty)
            #expect(sealed.id == message.id && sealed.chatID == message.chatID && sealed.senderID == message.senderID)
            #expect(MessageSealing.keyID(of: sealed) == "k1")
            #expect(try sealing.open(sealed) == message)
            #expect(try sealing.seal(message).content != sealed.content, "a fresh nonce per seal")
            #expect(try sealing.open(try sealing.open(try sealing.seal(sealed))) == message, "a value that looks sealed is sealed like any other content")
        }
        let plain = Self.message()
        #expect(try sealing.open(plain) == plain, "a message stored before encryption reads as it is")
    }

    @Test("A wrong key under the same id, a changed tag, a value moved to another message: each fails as tampered")
    func tampering() throws {
        let sealing = MessageSealing(sealer: try Self.sealer())
        let sealed = try sealing.seal(Self.message())
        let impostor = MessageSealing(sealer: try Self.sealer(("k1", Self.key2)))
        Self.expectFailure(.tampered) { try impostor.open(sealed) }

        var changed = sealed
        var bytes = Array(Data(base64Encoded: String(sealed.content.dropFirst("chatd-sealed:v1:k1:".count)))!)
        bytes[bytes.count - 1] ^= 0x01
        changed.content = "chatd-sealed:v1:k1:" + Data(bytes).base64EncodedString()
        Self.expectFailure(.tampered) { try sealing.open(changed) }

        var moved = Self.message("another")
        moved.content = sealed.content
        Self.expectFailure(.tampered) { try sealing.open(moved) }
        var otherChat = sealed
        otherChat.chatID = "chat-cd"
        Self.expectFailure(.tampered) { try sealing.open(otherChat) }

        var garbled = sealed
        garbled.content = "chatd-sealed:v1:k1:***"
        Self.expectFailure(.malformed) { try sealing.open(garbled) }
    }

    @Test("Old keys open what they sealed; an unknown key id is reported as such, naming the key")
    func rotation() throws {
        let old = MessageSealing(sealer: try Self.sealer())
        let sealed = try old.seal(Self.message())
        let rotated = MessageSealing(sealer: try Self.sealer(("k2", Self.key2), older: [("k1", Self.key1)]))
        #expect(try rotated.open(sealed).content == "the marker 7f3a is secret")
        #expect(MessageSealing.keyID(of: try rotated.seal(Self.message())) == "k2", "new seals use the current key")
        let retired = MessageSealing(sealer: try Self.sealer(("k2", Self.key2)))
        do {
            _ = try retired.open(sealed)
            Issue.record("k1 was retired")
        } catch {
            #expect(error.code == .unknownKey && error.message.contains("'k1'"))
            #expect(!error.message.contains("7f3a"))
        }
    }

    @Test("Key settings that cannot work stop startup naming the variable")
    func keySettings() {
        let good = Self.key1.base64EncodedString()
        let cases: [(String, String?, String?, String)] = [
            ("not base64!", "k1", nil, "ENCRYPTION_KEY"),
            (Data(count: 16).base64EncodedString(), "k1", nil, "ENCRYPTION_KEY"),
            (good, nil, nil, "ENCRYPTION_KEY_ID"),
            (good, "bad id with spaces", nil, "ENCRYPTION_KEY_ID"),
            (good, "k2", "k1", "ENCRYPTION_OLD_KEYS"),
            (good, "k2", "k1:%%%", "ENCRYPTION_OLD_KEYS"),
            (good, "k2", "k1:\(Data(count: 31).base64EncodedString())", "ENCRYPTION_OLD_KEYS"),
            (good, "k2", "k2:\(Self.key2.base64EncodedString())", "ENCRYPTION_OLD_KEYS"),
        ]
        for (key, id, old, variable) in cases {
            do {
                _ = try AESGCMSealer(key: key, keyID: id, oldKeys: old)
                Issue.record("\(variable) case \(key.prefix(8)) \(String(describing: id)) \(String(describing: old)) must be refused")
            } catch {
                #expect(error.message.hasPrefix(variable), "\(error.message)")
            }
        }
        #expect((try? AESGCMSealer(key: good, keyID: "k2", oldKeys: "k1:\(Self.key2.base64EncodedString()), k0:\(Self.key2.base64EncodedString())"))?.keyIDs == ["k2", "k0", "k1"])
    }

    @Test("The sealing store keeps content sealed underneath and plaintext above; flagged scope seals only flagged chats")
    func sealingStore() async throws {
        let base = InMemoryMessageStore()
        let store = SealingMessageStore(base: base, sealer: try Self.sealer(), scope: .flagged, logger: Logger(label: "test"))
        try await store.saveChat(Chat(id: "secret", participants: ["alice", "bob"], encrypted: true))
        try await store.saveChat(Chat(id: "open", participants: ["alice", "bob"]))
        let secret = Self.message(chat: "secret")
        let open = Self.message("plain 7f3a", chat: "open")
        #expect(try await store.insert(secret, pendingFor: ["bob"]) == .inserted)
        #expect(try await store.insert(open, pendingFor: ["bob"]) == .inserted)
        #expect(try await base.message(secret.id)?.content.hasPrefix("chatd-sealed:v1:k1:") == true)
        #expect(try await base.message(open.id)?.content == "plain 7f3a")
        #expect(try await store.message(secret.id) == secret)
        #expect(try await store.pendingMessages(for: "bob", createdSince: .distantPast, afterID: nil, limit: 10).map(\.content).sorted() == ["plain 7f3a", "the marker 7f3a is secret"])
    }

    @Test("A message whose key is gone: left out of history and catch-up pages (which still fill up), message_unreadable from a lookup, logged")
    func unreadableMessages() async throws {
        let base = InMemoryMessageStore()
        let logs = LogCapture()
        let old = SealingMessageStore(base: base, sealer: try Self.sealer(), scope: .all, logger: logs.logger())
        try await base.saveChat(Chat(id: "chat-ab", participants: ["alice", "bob"]))
        let generator = MessageIDGenerator()
        var messages: [Message] = []
        for index in 0..<6 {
            messages.append(Message(id: generator.next(), chatID: "chat-ab", senderID: "alice", content: "m\(index)", createdAt: Date()))
        }
        // m1 and m3 were sealed under k1, which is later retired; the rest under k2.
        let current = SealingMessageStore(base: base, sealer: try Self.sealer(("k2", Self.key2)), scope: .all, logger: logs.logger())
        for (index, message) in messages.enumerated() {
            _ = try await (index == 1 || index == 3 ? old : current).insert(message, pendingFor: ["bob"])
        }
        let page = try await current.pendingMessages(for: "bob", createdSince: .distantPast, afterID: nil, limit: 3)
        #expect(page.map(\.content) == ["m0", "m2", "m4"], "a full page of readable messages")
        let history = try await current.history(of: "chat-ab", before: nil, limit: 10)
        #expect(history.map(\.content) == ["m5", "m4", "m2", "m0"])
        do {
            _ = try await current.message(messages[1].id)
            Issue.record("m1's key is not configured")
        } catch let error as ChatError {
            #expect(error.code == .messageUnreadable && error.message.contains("ENCRYPTION_OLD_KEYS"))
        }
        #expect(logs.contains("Stored message cannot be opened; it is not delivered or shown until its key is configured", level: .error))
        #expect(!logs.all.contains { entry in entry.message.contains("m1") || entry.metadata.values.contains { $0.contains("m1") && $0.count < 4 } })
    }

    @Test("Rotation: reencrypt re-seals old-key and clear messages under the current key, resumably; then the old key can go")
    func reencrypt() async throws {
        let base = InMemoryMessageStore()
        try await base.saveChat(Chat(id: "chat-ab", participants: ["alice", "bob"]))
        let generator = MessageIDGenerator()
        let messages = (0..<7).map { Message(id: generator.next(), chatID: "chat-ab", senderID: "alice", content: "m\($0) 7f3a", createdAt: Date()) }
        let old = SealingMessageStore(base: base, sealer: try Self.sealer(), scope: .all, logger: Logger(label: "test"))
        for message in messages.prefix(5) { _ = try await old.insert(message, pendingFor: ["bob"]) }
        for message in messages.suffix(2) { _ = try await base.insert(message, pendingFor: ["bob"]) }  // stored before encryption
        let rotated = SealingMessageStore(base: base, sealer: try Self.sealer(("k2", Self.key2), older: [("k1", Self.key1)]), scope: .all, logger: Logger(label: "test"))
        var batches: [Int] = []
        let report = try await Reencryption(store: rotated, rewriting: base).run(batch: 3) { batches.append($0.examined) }
        #expect(report == Reencryption.Report(examined: 7, resealed: 7, unreadable: 0))
        #expect(batches == [3, 6, 7], "progress after each batch")
        for message in try await base.storedMessages(after: nil, limit: 100) {
            #expect(MessageSealing.keyID(of: message) == "k2")
        }
        #expect(try await Reencryption(store: rotated, rewriting: base).run(batch: 3).resealed == 0, "a second run has nothing to do")
        let retired = SealingMessageStore(base: base, sealer: try Self.sealer(("k2", Self.key2)), scope: .all, logger: Logger(label: "test"))
        #expect(try await retired.history(of: "chat-ab", before: nil, limit: 10).map(\.content) == messages.reversed().map(\.content))
        #expect(try await retired.message(messages[0].id)?.readBy == messages[0].readBy)
    }

    @Test("The product scenarios pass with every message sealed in the store", arguments: ProductScenario.all)
    func productScenarios(_ scenario: ProductScenario) async throws {
        let store = SealingMessageStore(base: InMemoryMessageStore(), sealer: try Self.sealer(), scope: .all, logger: Logger(label: "test"))
        try await scenario.run(store: { store })
    }

    @Test("The product scenarios any queue can run pass with messages sealed in the store and the queue; the queue holds no plaintext", arguments: ProductScenario.portable)
    func productScenariosSealedQueue(_ scenario: ProductScenario) async throws {
        let store = SealingMessageStore(base: InMemoryMessageStore(), sealer: try Self.sealer(), scope: .all, logger: Logger(label: "test"))
        let base = InMemoryMessageQueue()
        let queue = SealingMessageQueue(base: base, store: store)
        try await scenario.run(store: { store }, queue: { queue })
        let spy = try await base.consumer(for: "bob", prefetch: 1000)
        while let delivery = try await spy.next() {
            #expect(delivery.entry.message.content.hasPrefix("chatd-sealed:v1:k1:"), "\(delivery.entry.message.id)")
        }
    }

    private static func expectFailure(_ code: SealingError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Message) {
        do {
            _ = try body()
            Issue.record("expected \(code)", sourceLocation: sourceLocation)
        } catch {
            #expect((error as? SealingError)?.code == code, "\(error)", sourceLocation: sourceLocation)
        }
    }
}
