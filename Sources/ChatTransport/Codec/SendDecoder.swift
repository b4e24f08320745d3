import ChatDomain

/// Reads the common shape of a `message:send` argument list, `["message:send",{"chatId":"...","content":"...",...}]`,
/// in one pass over its bytes, without Foundation's `JSONDecoder`.
///
/// It takes objects whose members are `chatId` and `content` (strings) and optionally `messageType` and
/// `clientMessageId` (strings or null), each at most once, with any JSON whitespace. Anything else (attachments,
/// `replyTo`, other members, other types, numbers, malformed text) gives nil, and the caller decodes the packet
/// the general way, which says what is wrong. For the inputs it takes, the request equals what `JSONDecoder` makes.
struct SendDecoder {
    private let bytes: UnsafeBufferPointer<UInt8>
    private var index = 0

    private init(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    /// The request in `json` (the text after the packet type and ack id), or nil when it is not the common shape.
    static func decode(_ json: Substring.UTF8View) -> SendMessageRequest? {
        var copy = Substring(json)
        return copy.withUTF8 { buffer in
            var decoder = SendDecoder(buffer)
            return decoder.envelope()
        }
    }

    private mutating func envelope() -> SendMessageRequest? {
        guard self.consume(UInt8(ascii: "[")), self.string() == "message:send", self.consume(UInt8(ascii: ",")),
            self.consume(UInt8(ascii: "{"))
        else { return nil }
        var chatID: String?
        var content: String?
        var messageType: String??
        var clientMessageID: String??
        if !self.consume(UInt8(ascii: "}")) {
            repeat {
                guard let key = self.string(), self.consume(UInt8(ascii: ":")) else { return nil }
                switch key {
                case "chatId":
                    guard chatID == nil, let value = self.string() else { return nil }
                    chatID = value
                case "content":
                    guard content == nil, let value = self.string() else { return nil }
                    content = value
                case "messageType":
                    guard messageType == nil, let value = self.optionalString() else { return nil }
                    messageType = value
                case "clientMessageId":
                    guard clientMessageID == nil, let value = self.optionalString() else { return nil }
                    clientMessageID = value
                default:
                    return nil
                }
            } while self.consume(UInt8(ascii: ","))
            guard self.consume(UInt8(ascii: "}")) else { return nil }
        }
        guard self.consume(UInt8(ascii: "]")) else { return nil }
        self.skipWhitespace()
        guard self.index == self.bytes.count, let chatID, let content else { return nil }
        return SendMessageRequest(
            chatID: ChatID(chatID),
            content: content,
            messageType: (messageType ?? nil).map(MessageType.init(rawValue:)),
            clientMessageID: clientMessageID ?? nil
        )
    }

    private mutating func skipWhitespace() {
        while self.index < self.bytes.count {
            switch self.bytes[self.index] {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"): self.index += 1
            default: return
            }
        }
    }

    /// Consumes `byte` after optional whitespace; false (consuming only the whitespace) when it is not next.
    private mutating func consume(_ byte: UInt8) -> Bool {
        self.skipWhitespace()
        guard self.index < self.bytes.count, self.bytes[self.index] == byte else { return false }
        self.index += 1
        return true
    }

    /// A string, or null (`.some(nil)`); nil for anything else.
    private mutating func optionalString() -> String?? {
        self.skipWhitespace()
        if self.bytes.count - self.index >= 4, self.bytes[self.index] == UInt8(ascii: "n"), self.bytes[self.index + 1] == UInt8(ascii: "u"),
            self.bytes[self.index + 2] == UInt8(ascii: "l"), self.bytes[self.index + 3] == UInt8(ascii: "l")
        {
            self.index += 4
            return .some(nil)
        }
        guard let value = self.string() else { return nil }
        return .some(value)
    }

    /// A JSON string with its escapes resolved; nil when malformed (raw control characters, bad escapes, lone
    /// surrogates).
    private mutating func string() -> String? {
        guard self.consume(UInt8(ascii: "\"")) else { return nil }
        let start = self.index
        // The common case: no escapes, so the string is the bytes between the quotes (valid UTF-8, since they came
        // from a Swift string).
        while self.index < self.bytes.count {
            let byte = self.bytes[self.index]
            if byte == UInt8(ascii: "\"") {
                let value = String(decoding: UnsafeBufferPointer(rebasing: self.bytes[start..<self.index]), as: UTF8.self)
                self.index += 1
                return value
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { return nil }
            self.index += 1
        }
        var scalars = Array(self.bytes[start..<self.index])
        while self.index < self.bytes.count {
            let byte = self.bytes[self.index]
            self.index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: scalars, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard self.index < self.bytes.count else { return nil }
                let escape = self.bytes[self.index]
                self.index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scalars.append(escape)
                case UInt8(ascii: "b"): scalars.append(0x08)
                case UInt8(ascii: "f"): scalars.append(0x0C)
                case UInt8(ascii: "n"): scalars.append(0x0A)
                case UInt8(ascii: "r"): scalars.append(0x0D)
                case UInt8(ascii: "t"): scalars.append(0x09)
                case UInt8(ascii: "u"):
                    guard let scalar = self.unicodeEscape() else { return nil }
                    scalars.append(contentsOf: String(Character(scalar)).utf8)
                default: return nil
                }
            default:
                if byte < 0x20 { return nil }
                scalars.append(byte)
            }
        }
        return nil
    }

    /// The scalar of `\uXXXX` (the `\u` consumed), joining a surrogate pair; nil for a lone surrogate.
    private mutating func unicodeEscape() -> Unicode.Scalar? {
        guard let high = self.hex4() else { return nil }
        switch high {
        case 0xD800...0xDBFF:
            guard self.bytes.count - self.index >= 2, self.bytes[self.index] == UInt8(ascii: "\\"),
                self.bytes[self.index + 1] == UInt8(ascii: "u")
            else { return nil }
            self.index += 2
            guard let low = self.hex4(), (0xDC00...0xDFFF).contains(low) else { return nil }
            return Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
        case 0xDC00...0xDFFF:
            return nil
        default:
            return Unicode.Scalar(high)
        }
    }

    private mutating func hex4() -> UInt32? {
        guard self.bytes.count - self.index >= 4 else { return nil }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = self.bytes[self.index]
            self.index += 1
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: return nil
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }
}
