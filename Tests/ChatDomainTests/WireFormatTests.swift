import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// The JSON a client receives: every field present, ids as 24 lowercase hex, dates ISO-8601 with milliseconds.
@Suite("Wire format")
struct WireFormatTests {
    private static let id = MessageID(hex: "65f1a2b3c4d5e6f708192a3b")!
    private static let created = Timestamp.date(from: "2026-01-06T10:00:00.123Z")!

    private func json(_ value: some Encodable) throws -> [String: Any] {
        let data = try JSONEncoder().encode(value)
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    private var message: Message {
        Message(
            id: Self.id,
            chatID: "chat-ab",
            senderID: "alice",
            content: "Hello B! ✓ 👋",
            readBy: [ReadReceipt(userID: "alice", readAt: Self.created)],
            createdAt: Self.created
        )
    }

    @Test("A message carries every field, with null and empty defaults written out")
    func messageFields() throws {
        let object = try self.json(self.message)
        #expect(Set(object.keys) == ["_id", "chatId", "senderId", "content", "messageType", "attachments", "replyTo", "readBy", "createdAt", "clientMessageId"])
        #expect(object["_id"] as? String == "65f1a2b3c4d5e6f708192a3b")
        #expect(object["messageType"] as? String == "text")
        #expect((object["attachments"] as? [Any])?.isEmpty == true)
        #expect(object["replyTo"] is NSNull)
        #expect(object["clientMessageId"] is NSNull)
        #expect(object["createdAt"] as? String == "2026-01-06T10:00:00.123Z")
        let readBy = try #require(object["readBy"] as? [[String: Any]])
        #expect(readBy.first?["userId"] as? String == "alice")
        #expect(readBy.first?["readAt"] as? String == "2026-01-06T10:00:00.123Z")
    }

    @Test("message:received populates the sender and says whether it is new")
    func receivedMessage() throws {
        let received = ReceivedMessage(message: self.message, sender: User(id: "alice", username: "Alice"), isNew: false)
        let object = try self.json(received)
        let sender = try #require(object["senderId"] as? [String: Any])
        #expect(sender["_id"] as? String == "alice")
        #expect(sender["username"] as? String == "Alice")
        #expect(object["isNew"] as? Bool == false)
        #expect(object["content"] as? String == "Hello B! ✓ 👋")
        #expect(OutboundEvent.messageReceived(received).name == "message:received")
    }

    @Test("message:sent, user:online and message:error use the product's field names")
    func otherPayloads() throws {
        let sent = try self.json(MessageSent(messageID: Self.id, chatID: "chat-ab", timestamp: Self.created))
        #expect(sent["messageId"] as? String == Self.id.hexString)
        #expect(sent["chatId"] as? String == "chat-ab")
        #expect(sent["timestamp"] as? String == "2026-01-06T10:00:00.123Z")
        let online = try self.json(PresenceChange(userID: "bob", timestamp: Self.created))
        #expect(online["userId"] as? String == "bob")
        let error = try self.json(MessageErrorPayload(ChatError(.chatNotFound, "chat x does not exist"), chatID: "x"))
        #expect(error["code"] as? String == "chat_not_found")
        #expect(error["chatId"] as? String == "x")
    }

    @Test("A message survives a JSON round trip unchanged, attachments and replies included")
    func roundTrip() throws {
        var message = self.message
        message.attachments = [.object(["url": .string("https://example.test/a.png"), "size": .number(1024)])]
        message.replyTo = MessageID(hex: "65f1a2b3c4d5e6f708192a3a")
        message.clientMessageID = "c-1"
        message.messageType = .image
        let decoded = try JSONDecoder().decode(Message.self, from: JSONEncoder().encode(message))
        #expect(decoded == message)
    }

    @Test("A document with a missing or mistyped field fails to decode with the field's name")
    func decodingErrorsNameTheField() throws {
        let missing = #"{"_id":"65f1a2b3c4d5e6f708192a3b","chatId":"c","senderId":"a","createdAt":"2026-01-06T10:00:00.000Z"}"#
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(Message.self, from: Data(missing.utf8)) }
        let badID = #"{"_id":"nope","chatId":"c","senderId":"a","content":"x","createdAt":"2026-01-06T10:00:00.000Z"}"#
        do {
            _ = try JSONDecoder().decode(Message.self, from: Data(badID.utf8))
            Issue.record("a bad id decoded")
        } catch {
            #expect("\(error)".contains("_id"))
        }
        let badDate = #"{"_id":"65f1a2b3c4d5e6f708192a3b","chatId":"c","senderId":"a","content":"x","createdAt":"yesterday"}"#
        do {
            _ = try JSONDecoder().decode(Message.self, from: Data(badDate.utf8))
            Issue.record("a bad date decoded")
        } catch {
            #expect("\(error)".contains("createdAt"))
        }
    }

    @Test("Timestamps: milliseconds, UTC, leap years and whole-second input", arguments: [
        ("2026-01-06T10:00:00.000Z", 1_767_693_600.0),
        ("2024-02-29T23:59:59.999Z", 1_709_251_199.999),
        ("1970-01-01T00:00:00.000Z", 0.0),
        ("2000-03-01T00:00:00.001Z", 951_868_800.001),
    ])
    func timestamps(text: String, seconds: Double) throws {
        let date = try #require(Timestamp.date(from: text))
        #expect(abs(date.timeIntervalSince1970 - seconds) < 0.0005)
        #expect(Timestamp.string(from: Date(timeIntervalSince1970: seconds)) == text)
    }

    @Test("Timestamps that are not UTC ISO-8601 are refused", arguments: [
        "2026-01-06 10:00:00Z", "2026-01-06T10:00:00+01:00", "2026-13-06T10:00:00Z", "", "2026-01-06T10:00:00.Z",
    ])
    func badTimestamps(text: String) {
        #expect(Timestamp.date(from: text) == nil)
    }

    @Test("Ids are 24 lowercase hex characters, strictly increasing, also when the clock steps back")
    func ids() {
        let clock = ManualWallClock()
        let generator = MessageIDGenerator(clock: clock)
        var previous = generator.next()
        for step in 0..<1000 {
            if step == 500 { clock.advance(by: -3600) }
            let next = generator.next()
            #expect(next > previous)
            previous = next
        }
        #expect(previous.hexString.count == 24)
        #expect(previous.hexString == previous.hexString.lowercased())
        #expect(MessageID(hex: "65F1A2B3C4D5E6F708192A3B")?.hexString == "65f1a2b3c4d5e6f708192a3b")
        #expect(MessageID(hex: "65f1a2b3c4d5e6f708192a3") == nil)
        #expect(MessageID(hex: "65f1a2b3c4d5e6f708192a3g") == nil)
        let fresh = MessageIDGenerator(clock: ManualWallClock()).next()
        #expect(fresh.timestamp == ManualWallClock().now())
        #expect(MessageID(bytes: fresh.bytes) == fresh)
    }
}
