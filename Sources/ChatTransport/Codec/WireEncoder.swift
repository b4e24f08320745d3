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
        out.raw("[\"")
        out.raw(event.name)
        out.raw("\",")
        switch event {
        case .messageReceived(let received):
            try out.received(received)
        case .messageSent(let sent):
            out.sent(sent)
        case .userOnline, .userOffline, .messageError:
            out.raw(try Self.foundation(event.payload, name: event.name))
        }
        out.raw("]")
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

/// JSON text under construction.
private struct WireText {
    var text = ""

    init() {
        self.text.reserveCapacity(512)
    }

    mutating func raw(_ string: String) {
        self.text += string
    }

    /// A JSON string: `"` and `\` escaped, control characters as `\b \f \n \r \t` or `\u00xx`, everything else
    /// (including `/` and non-ASCII) as is, as Foundation's encoder does with `.withoutEscapingSlashes`.
    mutating func string(_ value: String) {
        self.text += "\""
        let utf8 = value.utf8
        // Most strings need no escaping: append them whole. (Scanned as raw bytes where the string is contiguous,
        // as native strings are: the `UTF8View` iterator cost more than the rest of the encoding.)
        let needsEscaping =
            utf8.withContiguousStorageIfAvailable { $0.contains(where: Self.escaped) } ?? utf8.contains(where: Self.escaped)
        guard needsEscaping else {
            self.text += value
            self.text += "\""
            return
        }
        var start = utf8.startIndex
        var index = start
        while index != utf8.endIndex {
            let byte = utf8[index]
            let escape: String? =
                switch byte {
                case UInt8(ascii: "\""): "\\\""
                case UInt8(ascii: "\\"): "\\\\"
                case 0x08: "\\b"
                case 0x0C: "\\f"
                case 0x0A: "\\n"
                case 0x0D: "\\r"
                case 0x09: "\\t"
                case ..<0x20: "\\u00" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16)
                default: nil
                }
            if let escape {
                self.text += String(Substring(utf8[start..<index]))
                self.text += escape
                start = utf8.index(after: index)
            }
            index = utf8.index(after: index)
        }
        self.text += String(Substring(utf8[start..<utf8.endIndex]))
        self.text += "\""
    }

    /// Whether a JSON string must escape `byte`.
    private static func escaped(_ byte: UInt8) -> Bool {
        byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\")
    }

    mutating func key(_ name: String, first: Bool = false) {
        self.text += first ? "{\"" : ",\""
        self.text += name
        self.text += "\":"
    }

    mutating func optionalString(_ value: String?) {
        if let value { self.string(value) } else { self.text += "null" }
    }

    mutating func user(_ user: User) {
        self.key("_id", first: true)
        self.string(user.id.rawValue)
        self.key("username")
        self.string(user.username)
        self.text += "}"
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
            self.text += "[]"
        } else {
            self.text += try WireEncoder.foundation(message.attachments, name: "message:received")
        }
        self.key("replyTo")
        self.optionalString(message.replyTo?.hexString)
        self.key("readBy")
        self.text += "["
        for (index, receipt) in message.readBy.enumerated() {
            if index > 0 { self.text += "," }
            self.key("userId", first: true)
            self.string(receipt.userID.rawValue)
            self.key("readAt")
            self.string(Timestamp.string(from: receipt.readAt))
            self.text += "}"
        }
        self.text += "]"
        self.key("createdAt")
        self.string(Timestamp.string(from: message.createdAt))
        self.key("clientMessageId")
        self.optionalString(message.clientMessageID)
        self.key("senderId")
        self.user(received.sender)
        self.key("isNew")
        self.text += received.isNew ? "true}" : "false}"
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
        self.text += "}"
    }
}
