public import ChatDomain
import Foundation

/// One Socket.IO v5 packet: `<type>[<nsp>,][<ackId>][JSON]`, carried in an Engine.IO message packet.
public struct SocketIOPacket: Hashable, Sendable {
    /// The Socket.IO packet types.
    public enum Kind: UInt8, Hashable, Sendable {
        case connect = 0
        case disconnect = 1
        case event = 2
        case ack = 3
        case connectError = 4
        case binaryEvent = 5
        case binaryAck = 6
    }

    /// The type.
    public var kind: Kind
    /// The namespace; `/` when the packet names none.
    public var namespace: String
    /// The acknowledgement id, when the sender wants (or gives) an acknowledgement.
    public var ackID: UInt64?
    /// The JSON data, if any.
    public var data: JSONValue?

    /// The longest acknowledgement id accepted, in digits; longer ids are refused rather than overflowing.
    static let maxAckIDDigits = 15

    /// Creates a packet.
    public init(_ kind: Kind, namespace: String = "/", ackID: UInt64? = nil, data: JSONValue? = nil) {
        self.kind = kind
        self.namespace = namespace
        self.ackID = ackID
        self.data = data
    }

    /// An EVENT packet: `[name, arguments...]`.
    public static func event(_ name: String, _ arguments: [JSONValue], namespace: String = "/", ackID: UInt64? = nil) -> SocketIOPacket {
        SocketIOPacket(.event, namespace: namespace, ackID: ackID, data: .array([.string(name)] + arguments))
    }

    /// For an EVENT packet, its name and arguments.
    public var eventNameAndArguments: (name: String, arguments: [JSONValue])? {
        guard self.kind == .event, case .array(let items)? = self.data, case .string(let name)? = items.first else { return nil }
        return (name, Array(items.dropFirst()))
    }

    /// The packet's text form.
    public var encoded: String {
        var out = String(self.kind.rawValue)
        if self.namespace != "/" { out += self.namespace + "," }
        if let ackID { out += String(ackID) }
        if let data { out += Self.json(data) }
        return out
    }

    /// Parses a packet; every malformed input is an error that says what was wrong, never a crash.
    public static func decode(_ text: String) throws(CodecError) -> SocketIOPacket {
        var rest = Substring(text)
        guard let first = rest.first else { throw CodecError("empty Socket.IO packet") }
        // An ASCII digit only (see EngineIOPacket.decode: "万" has a whole-number value too).
        guard let kind = asciiDigit(text.utf8.first).flatMap(Kind.init(rawValue:)) else {
            throw CodecError("unknown Socket.IO packet type \(LogSafe.quoted(String(first)))")
        }
        rest = rest.dropFirst()
        if kind == .binaryEvent || kind == .binaryAck {
            throw CodecError("binary Socket.IO packets are not supported; send JSON")
        }
        var namespace = "/"
        if rest.first == "/" {
            guard let comma = rest.firstIndex(of: ",") else {
                // A namespace alone is valid for CONNECT and DISCONNECT (`0/chat`).
                namespace = String(rest)
                rest = rest[rest.endIndex...]
                return SocketIOPacket(kind, namespace: try Self.validNamespace(namespace))
            }
            namespace = String(rest[..<comma])
            rest = rest[rest.index(after: comma)...]
        }
        let digits = rest.prefix { $0.isASCII && $0.isNumber }
        var ackID: UInt64?
        if !digits.isEmpty {
            guard digits.count <= Self.maxAckIDDigits, let value = UInt64(digits) else {
                throw CodecError("acknowledgement id is longer than \(Self.maxAckIDDigits) digits")
            }
            ackID = value
            rest = rest.dropFirst(digits.count)
        }
        var data: JSONValue?
        if !rest.isEmpty {
            do {
                data = try JSONDecoder().decode(JSONValue.self, from: Data(rest.utf8))
            } catch {
                throw CodecError("packet data is not valid JSON")
            }
        }
        let packet = SocketIOPacket(kind, namespace: try Self.validNamespace(namespace), ackID: ackID, data: data)
        switch kind {
        case .event:
            guard packet.eventNameAndArguments != nil else {
                throw CodecError("an EVENT's data must be an array starting with the event name")
            }
        case .ack:
            guard ackID != nil else { throw CodecError("an ACK needs an acknowledgement id") }
            guard case .array? = data else { throw CodecError("an ACK's data must be an array") }
        case .connect, .connectError:
            if let data, !data.isObject {
                throw CodecError("a CONNECT's data must be an object")
            }
        default:
            break
        }
        return packet
    }

    private static func validNamespace(_ namespace: String) throws(CodecError) -> String {
        guard namespace.count <= 256, !namespace.contains(where: { $0.isNewline }) else {
            throw CodecError("namespace is not valid")
        }
        return namespace
    }

    private static func json(_ value: JSONValue) -> String {
        (try? String(decoding: WireJSON.encode(value), as: UTF8.self)) ?? "null"
    }
}

extension JSONValue {
    var isObject: Bool {
        if case .object = self { true } else { false }
    }
}
