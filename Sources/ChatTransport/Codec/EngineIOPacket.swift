import ChatDomain

/// One Engine.IO v4 packet.
///
/// Text packets are `<type digit><data>`; over HTTP long-polling several are joined by the record separator
/// `\u{1e}`, and binary data travels there as `b<base64>`.
public struct EngineIOPacket: Hashable, Sendable {
    /// The Engine.IO packet types.
    public enum Kind: UInt8, Hashable, Sendable, CaseIterable {
        case open = 0
        case close = 1
        case ping = 2
        case pong = 3
        case message = 4
        case upgrade = 5
        case noop = 6
    }

    /// The type.
    public var kind: Kind
    /// The data after the type: text for text packets.
    public var text: String
    /// Binary data, for binary message packets (then `text` is empty).
    public var binary: [UInt8]?

    /// A text packet.
    public init(_ kind: Kind, _ text: String = "") {
        self.kind = kind
        self.text = text
        self.binary = nil
    }

    /// A binary message packet.
    public init(binary: [UInt8]) {
        self.kind = .message
        self.text = ""
        self.binary = binary
    }

    /// The separator of packets in a long-polling payload.
    public static let recordSeparator: Character = "\u{1e}"

    /// The packet as a WebSocket text frame or one element of a polling payload.
    public var encoded: String {
        if let binary { return "b" + Base64.encode(binary) }
        return String(self.kind.rawValue) + self.text
    }

    /// Parses one packet (a WebSocket text frame, or one element of a polling payload).
    public static func decode(_ text: Substring) throws(CodecError) -> EngineIOPacket {
        guard let first = text.first else { throw CodecError("empty Engine.IO packet") }
        if first == "b" {
            guard let bytes = Base64.decode(text.dropFirst()) else { throw CodecError("binary Engine.IO packet is not valid base64") }
            return EngineIOPacket(binary: bytes)
        }
        // Only an ASCII digit is a type: `Character.wholeNumberValue` also reads "万" as 10,000, and converting
        // that to UInt8 traps, so the type is taken from the first UTF-8 byte and never converted unchecked.
        guard let kind = asciiDigit(text.utf8.first).flatMap(Kind.init(rawValue:)) else {
            throw CodecError("unknown Engine.IO packet type \(LogSafe.quoted(String(first)))")
        }
        return EngineIOPacket(kind, String(text.dropFirst()))
    }

    /// Joins packets into a long-polling payload.
    public static func encodePayload(_ packets: [EngineIOPacket]) -> String {
        packets.map(\.encoded).joined(separator: String(Self.recordSeparator))
    }

    /// Splits a long-polling payload into its packets.
    public static func decodePayload(_ payload: String) throws(CodecError) -> [EngineIOPacket] {
        var packets: [EngineIOPacket] = []
        for part in payload.split(separator: Self.recordSeparator, omittingEmptySubsequences: false) {
            packets.append(try Self.decode(part))
        }
        return packets
    }
}

/// The value of an ASCII digit byte; nil for any other byte (or none).
func asciiDigit(_ byte: UInt8?) -> UInt8? {
    guard let byte, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
    return byte - UInt8(ascii: "0")
}

/// A malformed packet: what was wrong, for the log line and the client's error.
public struct CodecError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What was wrong.
    public var message: String
    /// Creates an error.
    public init(_ message: String) { self.message = message }
    public var description: String { self.message }
}

/// Standard base64 without Foundation, for binary packets in polling payloads.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            let b0 = chunk[chunk.startIndex]
            let b1 = chunk.count > 1 ? chunk[chunk.startIndex + 1] : 0
            let b2 = chunk.count > 2 ? chunk[chunk.startIndex + 2] : 0
            out.append(Self.alphabet[Int(b0 >> 2)])
            out.append(Self.alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(chunk.count > 1 ? Self.alphabet[Int((b1 & 0x0f) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(chunk.count > 2 ? Self.alphabet[Int(b2 & 0x3f)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(_ text: Substring) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count.isMultiple(of: 4) else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(chars.count / 4 * 3)
        var index = 0
        while index < chars.count {
            var values = [UInt8](repeating: 0, count: 4)
            var padding = 0
            for offset in 0..<4 {
                let char = chars[index + offset]
                if char == UInt8(ascii: "=") {
                    // Padding only at the end of the last quartet.
                    guard index + 4 == chars.count, offset >= 2 else { return nil }
                    padding += 1
                    continue
                }
                guard padding == 0, let value = Self.value(of: char) else { return nil }
                values[offset] = value
            }
            out.append(values[0] << 2 | values[1] >> 4)
            if padding < 2 { out.append(values[1] << 4 | values[2] >> 2) }
            if padding < 1 { out.append(values[2] << 6 | values[3]) }
            index += 4
        }
        return out
    }

    private static func value(of char: UInt8) -> UInt8? {
        switch char {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): char - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): char - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): char - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): 62
        case UInt8(ascii: "/"): 63
        default: nil
        }
    }
}
