import Foundation

/// Seals a message's `content` and `attachments` into one value at rest and opens it again: everything else (ids,
/// chat, sender, type, times, receipts) stays as it is, so the stores and queues keep working on it.
///
/// A sealed message's `content` is `chatd-sealed:v1:<key id>:<base64 of nonce, ciphertext and tag>` and its
/// `attachments` are empty; the message id and chat id are bound as associated data, so a sealed value copied onto
/// another message does not open.
public struct MessageSealing: Sendable {
    /// What a sealed value starts with.
    public static let prefix = "chatd-sealed:v1:"
    private static let plainContent: UInt8 = 0
    private static let contentAndAttachments: UInt8 = 1

    /// Seals and opens.
    public let sealer: any MessageSealer

    /// Sealing with `sealer`.
    public init(sealer: any MessageSealer) {
        self.sealer = sealer
    }

    /// Whether `message` holds a sealed value.
    public static func isSealed(_ message: Message) -> Bool {
        message.content.hasPrefix(Self.prefix)
    }

    /// The id of the key `message` was sealed with; nil when it is not sealed.
    public static func keyID(of message: Message) -> String? {
        guard Self.isSealed(message) else { return nil }
        let rest = message.content.utf8.dropFirst(Self.prefix.utf8.count)
        guard let colon = rest.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        return String(Substring(rest[..<colon]))
    }

    /// `message` with its content and attachments sealed under the current key.
    public func seal(_ message: Message) throws(SealingError) -> Message {
        var plaintext: [UInt8]
        if message.attachments.isEmpty {
            plaintext = [Self.plainContent]
            plaintext.append(contentsOf: message.content.utf8)
        } else {
            plaintext = [Self.contentAndAttachments]
            do {
                plaintext.append(contentsOf: try JSONEncoder().encode(Envelope(content: message.content, attachments: message.attachments)))
            } catch {
                throw SealingError(.malformed, "the attachments of message \(message.id) cannot be encoded: \(error)")
            }
        }
        let sealed = try self.sealer.seal(plaintext, associatedData: Self.associatedData(of: message))
        var copy = message
        copy.content = Self.prefix + self.sealer.currentKeyID + ":" + Data(sealed).base64EncodedString()
        copy.attachments = []
        return copy
    }

    /// `message` with its content and attachments opened (a message that is not sealed as it is).
    /// - Throws: ``SealingError`` naming the message and the key; never content.
    public func open(_ message: Message) throws(SealingError) -> Message {
        guard Self.isSealed(message) else { return message }
        let rest = message.content.dropFirst(Self.prefix.count)
        guard let colon = rest.firstIndex(of: ":"), let sealed = Data(base64Encoded: String(rest[rest.index(after: colon)...])) else {
            throw SealingError(.malformed, "message \(message.id) holds a sealed value chatd cannot parse")
        }
        let keyID = String(rest[..<colon])
        let plaintext: [UInt8]
        do {
            plaintext = try self.sealer.open(Array(sealed), keyID: keyID, associatedData: Self.associatedData(of: message))
        } catch {
            throw SealingError(error.code, "message \(message.id) of chat \(LogSafe.quoted(message.chatID.rawValue)): \(error.message)")
        }
        var copy = message
        switch plaintext.first {
        case Self.plainContent?:
            copy.content = String(decoding: plaintext.dropFirst(), as: UTF8.self)
            copy.attachments = []
        case Self.contentAndAttachments?:
            guard let envelope = try? JSONDecoder().decode(Envelope.self, from: Data(plaintext.dropFirst())) else {
                throw SealingError(.malformed, "message \(message.id): the opened value is not chatd's")
            }
            copy.content = envelope.content
            copy.attachments = envelope.attachments
        default:
            throw SealingError(.malformed, "message \(message.id): the opened value is not chatd's")
        }
        return copy
    }

    /// What binds a sealed value to its message: the message id and the chat id.
    static func associatedData(of message: Message) -> [UInt8] {
        Array("chatd/v1\u{0}\(message.id.hexString)\u{0}".utf8) + Array(message.chatID.rawValue.utf8)
    }

    private struct Envelope: Codable {
        var content: String
        var attachments: [JSONValue]
    }
}
