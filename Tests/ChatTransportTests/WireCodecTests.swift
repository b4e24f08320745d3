import ChatDomain
@testable import ChatTransport
import Foundation
import Testing

/// The hand-written encoder and decoder of the delivery path against Foundation's coders: the same JSON (the same
/// members with the same values; Foundation's member order is its dictionary's, which changes from run to run) and
/// the same requests, on every input they take.
@Suite("Wire codec of the delivery path")
struct WireCodecTests {
    /// Strings that exercise escaping: quotes, backslashes, every control character, slashes, non-ASCII, emoji.
    static let awkwardStrings: [String] = [
        "", "plain", "with \"quotes\" and \\backslashes\\", "line\nbreak\tand\rreturn", "\u{8}\u{c}",
        String((0..<32).map { Character(Unicode.Scalar(UInt8($0))) }), "</script> a/b", "Grüße, 万, ٣, ½",
        "emoji 👋🏽 and \u{7f}", "\u{2028}\u{2029}", String(repeating: "x", count: 3000),
    ]

    static func randomString(_ generator: inout some RandomNumberGenerator) -> String {
        let pieces = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\u{1}", "\u{1f}", "é", "万", "👋", "\u{7f}", "{", "}", ":", ","]
        return String((0..<Int.random(in: 0...12, using: &generator)).map { _ in pieces.randomElement(using: &generator)! }.joined())
    }

    static func message(content: String, client: String?, reply: Bool, readers: Int) -> Message {
        let generator = MessageIDGenerator()
        let at = Date(timeIntervalSince1970: 1_767_693_600.123)
        return Message(
            id: generator.next(), chatID: ChatID("chat/\(content.prefix(5))"), senderID: "alice", content: content,
            messageType: reply ? "image" : .text, attachments: [], replyTo: reply ? generator.next() : nil,
            readBy: (0..<readers).map { ReadReceipt(userID: UserID("u\($0)\"\(content.prefix(2))"), readAt: at.addingTimeInterval(Double($0))) },
            createdAt: at, clientMessageID: client
        )
    }

    @Test("message:received is the JSON Foundation's encoder writes", arguments: Self.awkwardStrings)
    func receivedMatchesFoundation(content: String) throws {
        for (client, reply, readers, isNew) in [(nil, false, 1, true), ("c-\(content.prefix(3))", true, 3, false), ("", false, 0, true)] {
            let received = ReceivedMessage(
                message: Self.message(content: content, client: client, reply: reply, readers: readers),
                sender: User(id: UserID("alice"), username: content),
                isNew: isNew
            )
            let event = OutboundEvent.messageReceived(received)
            #expect(try Self.json(WireEncoder.event(event)) == Self.json(Self.foundationEvent(event)))
        }
    }

    @Test("Attachments, message:sent and the other events are the JSON Foundation's encoder writes")
    func otherEventsMatchFoundation() throws {
        var message = Self.message(content: "see attached", client: nil, reply: false, readers: 1)
        message.attachments = [.object(["url": .string("https://x.test/a/b.png"), "size": .number(1024.5), "tags": .array([.bool(true), .null])])]
        let events: [OutboundEvent] = [
            .messageReceived(ReceivedMessage(message: message, sender: User(id: "bob", username: "Bob"), isNew: true)),
            .messageSent(MessageSent(messageID: message.id, chatID: "c\"1", timestamp: message.createdAt)),
            .messageSent(MessageSent(messageID: message.id, chatID: "c1", timestamp: message.createdAt, clientMessageID: "k\n1")),
            .userOnline(PresenceChange(userID: "bob", timestamp: message.createdAt)),
            .messageError(MessageErrorPayload(ChatError(.rateLimited, "slow \"down\"", retryAfter: .milliseconds(250)), chatID: "c1")),
        ]
        for event in events {
            #expect(try Self.json(WireEncoder.event(event)) == Self.json(Self.foundationEvent(event)))
        }
        let sent = MessageSent(messageID: message.id, chatID: "c/1", timestamp: message.createdAt, clientMessageID: "x")
        #expect(try Self.json(WireEncoder.sent(sent)) == Self.json(String(decoding: try WireJSON.encode(sent), as: UTF8.self)))
    }

    @Test("Random strings encode as Foundation encodes them")
    func randomStringsMatchFoundation() async throws {
        var generator = SystemRandomNumberGenerator()
        for index in 0..<1_000 {
            // These loops never suspend otherwise; other tests of the process need the pool's threads too.
            if index.isMultiple(of: 100) { await Task.yield() }
            let content = Self.randomString(&generator)
            let event = OutboundEvent.messageReceived(ReceivedMessage(
                message: Self.message(content: content, client: Self.randomString(&generator), reply: false, readers: 1),
                sender: User(id: UserID(Self.randomString(&generator)), username: Self.randomString(&generator)),
                isNew: true
            ))
            #expect(try Self.json(WireEncoder.event(event)) == Self.json(Self.foundationEvent(event)), "content \(content.debugDescription)")
        }
    }

    @Test("message:send in its common shape decodes as JSONDecoder decodes it, escapes and whitespace included")
    func sendMatchesFoundation() async throws {
        var generator = SystemRandomNumberGenerator()
        var texts = [
            #"["message:send",{"chatId":"c1","content":"hi"}]"#,
            #"[ "message:send" , { "content" : "a\"b\\c\/d\n\u00e9\ud83d\udc4b" , "chatId":"c\u0031", "messageType" : null } ] "#,
            #"["message:send",{"chatId":"c1","content":"","messageType":"image","clientMessageId":"k-1"}]"#,
            #"["message:send",{"chatId":"c1","content":"x","clientMessageId":null}]"#,
        ]
        for index in 0..<1_000 {
            if index.isMultiple(of: 100) { await Task.yield() }
            // Random strings written by Foundation's encoder, which escapes what must be.
            let request = SendMessageRequest(
                chatID: ChatID(Self.randomString(&generator)), content: Self.randomString(&generator),
                messageType: Bool.random(using: &generator) ? MessageType(rawValue: Self.randomString(&generator)) : nil,
                clientMessageID: Bool.random(using: &generator) ? Self.randomString(&generator) : nil
            )
            let payload = String(decoding: try JSONEncoder().encode(request), as: UTF8.self)
            texts.append(#"["message:send","# + payload + "]")
        }
        for text in texts {
            let fast = try #require(SendDecoder.decode(Substring(text).utf8), "not taken: \(text)")
            #expect(fast == Self.foundationSend(text), "\(text)")
        }
    }

    @Test("Anything but the common shape is left to the general decoder", arguments: [
        #"["message:send",{"chatId":"c1","content":"hi","attachments":[]}]"#,
        #"["message:send",{"chatId":"c1","content":"hi","replyTo":null}]"#,
        #"["message:send",{"chatId":"c1","content":"hi","extra":1}]"#,
        #"["message:send",{"chatId":"c1","chatId":"c2","content":"hi"}]"#,
        #"["message:send",{"chatId":"c1"}]"#,
        #"["message:send",{"chatId":1,"content":"hi"}]"#,
        #"["message:send",{"chatId":"c1","content":"hi"},2]"#,
        #"["message:send",{"chatId":"c1","content":"hi"}"#,
        #"["message:send",{"chatId":"c1","content":"h"i"}]"#,
        #"["message:send",{"chatId":"c1","content":"\ud800"}]"#,
        #"["message:send",{"chatId":"c1","content":"\x"}]"#,
        "[\"message:send\",{\"chatId\":\"c1\",\"content\":\"raw\u{1}control\"}]",
        #"["other",{"chatId":"c1","content":"hi"}]"#,
        #"["message:send",null]"#,
    ])
    func otherShapesFallBack(text: String) {
        #expect(SendDecoder.decode(Substring(text).utf8) == nil)
    }

    @Test("On random and mutated input the fast decoder never disagrees with JSONDecoder")
    func randomSendInputAgrees() async {
        var generator = SystemRandomNumberGenerator()
        let base = Array(#"["message:send",{"chatId":"c1","content":"a\"b\u00e9","messageType":"text","clientMessageId":null}]"#.utf8)
        let alphabet = Array(#"[]{}":,\ nul0u9aé"#.utf8)
        var taken = 0
        for index in 0..<10_000 {
            if index.isMultiple(of: 200) { await Task.yield() }
            var bytes = base
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let index = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: bytes.remove(at: index)
                case 1: bytes.insert(alphabet.randomElement(using: &generator)!, at: index)
                default: bytes[index] = alphabet.randomElement(using: &generator)!
                }
            }
            let text = String(decoding: bytes, as: UTF8.self)
            guard let fast = SendDecoder.decode(Substring(text).utf8) else { continue }
            taken += 1
            #expect(fast == Self.foundationSend(text), "\(text)")
        }
        #expect(taken > 100, "mutations that stay in the common shape were taken")
    }

    @Test("Members are written in one fixed order: the message's fields, then senderId and isNew")
    func memberOrder() throws {
        let message = Self.message(content: "hi", client: "k", reply: false, readers: 1)
        let text = try WireEncoder.event(.messageReceived(ReceivedMessage(message: message, sender: User(id: "a", username: "A"), isNew: true)))
        let keys = ["\"_id\"", "\"chatId\"", "\"content\"", "\"messageType\"", "\"attachments\"", "\"replyTo\"", "\"readBy\"", "\"createdAt\"", "\"clientMessageId\"", "\"senderId\"", "\"isNew\""]
        let positions = keys.map { text.range(of: $0)?.lowerBound }
        #expect(positions.allSatisfy { $0 != nil } && positions.map { $0! } == positions.map { $0! }.sorted(), "\(text)")
    }

    /// The JSON value of `text` (objects compare by members, whatever their order); throws when it is not JSON.
    static func json(_ text: String) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
    }

    @Test("What a client sends takes the fast paths: message:send and the ACK of message:received, as framed on the wire")
    func fastPathsTaken() throws {
        // The Socket.IO packets as the server sees them: inside Engine.IO messages, after the Engine.IO type.
        let send = try EngineIOPacket.decode(#"4212["message:send",{"chatId":"c1","content":"hi"}]"#)
        let taken = try #require(SocketIOServer.fastSend(send.text))
        #expect(taken.ackID == 12 && taken.request == SendMessageRequest(chatID: "c1", content: "hi"))
        #expect(SocketIOServer.fastSend(try EngineIOPacket.decode(#"42["message:send",{"chatId":"c1","content":"hi"}]"#).text)?.ackID == nil)
        #expect(SocketIOServer.fastAck(try EngineIOPacket.decode("4377[]").text) == 77)
        // Other namespaces and packet types are left to the general decoder.
        #expect(SocketIOServer.fastAck(try EngineIOPacket.decode("43/admin,77[]").text) == nil)
        #expect(SocketIOServer.fastSend(try EngineIOPacket.decode(#"42/admin,["message:send",{"chatId":"c1","content":"hi"}]"#).text) == nil)
        #expect(SocketIOServer.fastAck(try EngineIOPacket.decode(#"4277["message:send"]"#).text) == nil)
    }

    static func foundationEvent(_ event: OutboundEvent) throws -> String {
        "[\"\(event.name)\"," + String(decoding: try WireJSON.encode(event.payload), as: UTF8.self) + "]"
    }

    static func foundationSend(_ text: String) -> SendMessageRequest? {
        guard case .event = (try? SocketIOPacket.decode("2" + text))?.kind,
            let arguments = (try? SocketIOPacket.decode("2" + text))?.eventNameAndArguments?.arguments,
            case .success(let request) = SocketIOServer.sendRequest(from: arguments)
        else { return nil }
        return request
    }
}
