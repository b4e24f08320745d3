import ChatDomain
import Foundation

/// Writes the JSON of the events on the delivery path (`message:received`, `message:sent`) directly, field by
/// field in the wire order, instead of through Foundation's `JSONEncoder` (a quarter of the CPU of a delivery when
/// it was used). The text is what `WireJSON` writes for the same value: the same keys in the same order, strings
/// escaped the same way; attachments (client-defined JSON, rare) still go through `WireJSON`.
enum WireEncoder {
    /// `["<name>",<payload>]`: the argument list of a Socket.IO EVENT, as ``SocketIOServer/encodeEvent(_:)`` makes.
    static func event(_ event: OutboundEvent) throws(ChatError) -> String {
        var out = WireText()
        out.literal("[\"")
        out.raw(event.name)
        out.literal("\",")
        switch event {
        case .messageReceived(let received):
            try out.received(received)
        case .messageSent(let sent):
            out.sent(sent)
        case .userOnline, .userOffline, .messageError, .messageRead, .typing:
            out.raw(try Self.foundation(event.payload, name: event.name))
        }
        out.literal("]")
        return out.text
    }

    /// The JSON of `sent`, for the acknowledgement of `message:send`.
    static func sent(_ sent: MessageSent) -> String {
        var out = WireText()
        out.sent(sent)
        return out.text
    }

    /// `value` through Foundation's encoder (`WireJSON`), for the payloads not written by hand.
    static func foundation(_ value: some Encodable, name: String) throws(ChatError) -> String {
        do {
            return String(decoding: try WireJSON.encode(value), as: UTF8.self)
        } catch {
            throw ChatError(.badRequest, "could not encode \(name): \(error)")
        }
    }
}

/// JSON text under construction, as UTF-8 bytes: appending to a `String` piece by piece cost five times as many
/// instructions (`./scripts/bench.sh instructions`), each append checking the string's capacity and breadcrumbs.
private struct WireText {
    private var bytes: [UInt8] = []

    init() {
        self.bytes.reserveCapacity(512)
    }

    /// The text: valid UTF-8, since every piece came from a `String`.
    var text: String {
        String(decoding: self.bytes, as: UTF8.self)
    }

    mutating func raw(_ string: String) {
        self.bytes.append(contentsOf: string.utf8)
    }

    mutating func literal(_ string: StaticString) {
        string.withUTF8Buffer { self.bytes.append(contentsOf: $0) }
    }

    /// A JSON string: `"` and `\` escaped, control characters as `\b \f \n \r \t` or `\u00xx`, everything else
    /// (including `/` and non-ASCII) as is, as Foundation's encoder does with `.withoutEscapingSlashes`.
    mutating func string(_ value: String) {
        self.bytes.append(UInt8(ascii: "\""))
        var value = value
        // Native strings are contiguous; a bridged or lazily built one is made so first.
        value.withUTF8 { utf8 in
            // Most strings need no escaping: append them whole.
            guard utf8.contains(where: Self.escaped) else {
                self.bytes.append(contentsOf: utf8)
                return
            }
            for byte in utf8 {
                switch byte {
                case UInt8(ascii: "\""): self.literal("\\\"")
                case UInt8(ascii: "\\"): self.literal("\\\\")
                case 0x08: self.literal("\\b")
                case 0x0C: self.literal("\\f")
                case 0x0A: self.literal("\\n")
                case 0x0D: self.literal("\\r")
                case 0x09: self.literal("\\t")
                case ..<0x20:
                    self.literal("\\u00")
                    self.bytes.append(Self.hexDigits[Int(byte >> 4)])
                    self.bytes.append(Self.hexDigits[Int(byte & 0x0F)])
                default: self.bytes.append(byte)
                }
            }
        }
        self.bytes.append(UInt8(ascii: "\""))
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Whether a JSON string must escape `byte`.
    private static func escaped(_ byte: UInt8) -> Bool {
        byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\")
    }

    mutating func key(_ name: StaticString, first: Bool = false) {
        self.literal(first ? "{\"" : ",\"")
        self.literal(name)
        self.literal("\":")
    }

    mutating func optionalString(_ value: String?) {
        if let value { self.string(value) } else { self.literal("null") }
    }

    mutating func user(_ user: User) {
        self.key("_id", first: true)
        self.string(user.id.rawValue)
        self.key("username")
        self.string(user.username)
        self.literal("}")
    }

    /// `message:received`'s payload: the message's fields in ``Message``'s coding order, the populated sender, `isNew`.
    mutating func received(_ received: ReceivedMessage) throws(ChatError) {
        let message = received.message
        self.key("_id", first: true)
        self.string(message.id.hexString)
        self.key("chatId")
        self.string(message.chatID.rawValue)
        self.key("content")
        self.string(message.content)
        self.key("messageType")
        self.string(message.messageType.rawValue)
        self.key("attachments")
        if message.attachments.isEmpty {
            self.literal("[]")
        } else {
            self.raw(try WireEncoder.foundation(message.attachments, name: "message:received"))
        }
        self.key("replyTo")
        self.optionalString(message.replyTo?.hexString)
        self.key("readBy")
        self.literal("[")
        for (index, receipt) in message.readBy.enumerated() {
            if index > 0 { self.literal(",") }
            self.key("userId", first: true)
            self.string(receipt.userID.rawValue)
            self.key("readAt")
            self.string(Timestamp.string(from: receipt.readAt))
            self.literal("}")
        }
        self.literal("]")
        self.key("createdAt")
        self.string(Timestamp.string(from: message.createdAt))
        self.key("clientMessageId")
        self.optionalString(message.clientMessageID)
        self.key("senderId")
        self.user(received.sender)
        self.key("isNew")
        self.literal(received.isNew ? "true}" : "false}")
    }

    /// `message:sent`'s payload; `clientMessageId` only when the client gave one, as the synthesized coding does.
    mutating func sent(_ sent: MessageSent) {
        self.key("messageId", first: true)
        self.string(sent.messageID.hexString)
        self.key("chatId")
        self.string(sent.chatID.rawValue)
        self.key("timestamp")
        self.string(Timestamp.string(from: sent.timestamp))
        if let client = sent.clientMessageID {
            self.key("clientMessageId")
            self.string(client)
        }
        self.literal("}")
    }
}
