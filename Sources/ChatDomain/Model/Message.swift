public import Foundation

/// A chat message as stored and as sent to clients.
///
/// Its JSON always carries every field (`replyTo: null`, `attachments: []`, `clientMessageId: null`), ids as
/// 24 lowercase hex characters and dates as ``Timestamp``s.
public struct Message: Hashable, Sendable, Codable {
    /// The time-ordered id (`_id`).
    public var id: MessageID
    /// The chat the message belongs to.
    public var chatID: ChatID
    /// The author.
    public var senderID: UserID
    /// The text; at most ``ChatServiceConfiguration/maxContentBytes`` UTF-8 bytes.
    public var content: String
    /// The kind of content, `text` unless the client says otherwise.
    public var messageType: MessageType
    /// Client-defined attachment descriptions, carried as they came.
    public var attachments: [JSONValue]
    /// The message this one answers, if any.
    public var replyTo: MessageID?
    /// Who has received the message and when; the sender is in it from creation.
    public var readBy: [ReadReceipt]
    /// When the server accepted the message, to the millisecond.
    @WireTimestamp public var createdAt: Date
    /// The sender's own id for the message, which makes a repeated send idempotent.
    public var clientMessageID: String?

    /// Creates a message; `createdAt` is truncated to the millisecond so it survives the wire unchanged.
    public init(
        id: MessageID,
        chatID: ChatID,
        senderID: UserID,
        content: String,
        messageType: MessageType = .text,
        attachments: [JSONValue] = [],
        replyTo: MessageID? = nil,
        readBy: [ReadReceipt] = [],
        createdAt: Date,
        clientMessageID: String? = nil
    ) {
        self.id = id
        self.chatID = chatID
        self.senderID = senderID
        self.content = content
        self.messageType = messageType
        self.attachments = attachments
        self.replyTo = replyTo
        self.readBy = readBy
        self.createdAt = createdAt
        self.clientMessageID = clientMessageID
    }

    /// Whether `user` is in ``readBy``.
    public func isRead(by user: UserID) -> Bool {
        self.readBy.contains { $0.userID == user }
    }

    /// Whether `other` is the same send repeated: same sender, chat, client id and content. A repeated send is
    /// answered with the first message; a reused client id with other content is refused.
    public func isSameSend(as other: Message) -> Bool {
        self.senderID == other.senderID && self.chatID == other.chatID && self.clientMessageID == other.clientMessageID
            && self.content == other.content && self.messageType == other.messageType
            && self.attachments == other.attachments && self.replyTo == other.replyTo
    }

    /// Adds `user` to ``readBy`` unless already there; returns whether it was added.
    @discardableResult
    public mutating func markRead(by user: UserID, at date: Date) -> Bool {
        guard !self.isRead(by: user) else { return false }
        self.readBy.append(ReadReceipt(userID: user, readAt: date))
        return true
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id"
        case chatID = "chatId"
        case senderID = "senderId"
        case content, messageType, attachments, replyTo, readBy, createdAt
        case clientMessageID = "clientMessageId"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.id = try container.decode(MessageID.self, forKey: .id)
        self.chatID = try container.decode(ChatID.self, forKey: .chatID)
        self.senderID = try container.decode(UserID.self, forKey: .senderID)
        self.content = try container.decode(String.self, forKey: .content)
        self.messageType = try container.decodeIfPresent(MessageType.self, forKey: .messageType) ?? .text
        self.attachments = try container.decodeIfPresent([JSONValue].self, forKey: .attachments) ?? []
        self.replyTo = try container.decodeIfPresent(MessageID.self, forKey: .replyTo)
        self.readBy = try container.decodeIfPresent([ReadReceipt].self, forKey: .readBy) ?? []
        self._createdAt = try container.decode(WireTimestamp.self, forKey: .createdAt)
        self.clientMessageID = try container.decodeIfPresent(String.self, forKey: .clientMessageID)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try self.encodeFields(into: &container)
        try container.encode(self.senderID, forKey: .senderID)
    }

    /// Every field but `senderId`, which ``ReceivedMessage`` writes in its populated form.
    func encodeFields(into container: inout KeyedEncodingContainer<CodingKeys>) throws {
        try container.encode(self.id, forKey: .id)
        try container.encode(self.chatID, forKey: .chatID)
        try container.encode(self.content, forKey: .content)
        try container.encode(self.messageType, forKey: .messageType)
        try container.encode(self.attachments, forKey: .attachments)
        try container.encode(self.replyTo, forKey: .replyTo)
        try container.encode(self.readBy, forKey: .readBy)
        try container.encode(self._createdAt, forKey: .createdAt)
        try container.encode(self.clientMessageID, forKey: .clientMessageID)
    }
}

/// That a user received a message, and when.
public struct ReadReceipt: Hashable, Sendable, Codable {
    /// The user who received the message.
    public var userID: UserID
    /// When they received it.
    @WireTimestamp public var readAt: Date

    /// Creates a receipt; the date is truncated to the millisecond.
    public init(userID: UserID, readAt: Date) {
        self.userID = userID
        self.readAt = readAt
    }

    enum CodingKeys: String, CodingKey {
        case userID = "userId"
        case readAt
    }
}

/// The kind of a message's content. The allowed set is configurable (``ChatServiceConfiguration/allowedMessageTypes``).
public struct MessageType: RawRepresentable, Hashable, Sendable, Codable, ExpressibleByStringLiteral,
    CustomStringConvertible
{
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public var description: String { self.rawValue }

    /// Plain text, the default.
    public static let text: MessageType = "text"
    /// An image; the content is a caption and `attachments` describe the image.
    public static let image: MessageType = "image"
    /// A file; the content is a caption and `attachments` describe the file.
    public static let file: MessageType = "file"
    /// A message written by the system (joins, renames).
    public static let system: MessageType = "system"
}
