public import Foundation

/// An event the server sends to a client; ``name`` is the Socket.IO event name and ``payload`` its argument.
public enum OutboundEvent: Sendable, Hashable {
    /// `message:received`: a message for the recipient, live (`isNew: true`) or caught up (`isNew: false`).
    case messageReceived(ReceivedMessage)
    /// `message:sent`: the sender's message was stored and routed.
    case messageSent(MessageSent)
    /// `user:online`: a user the recipient shares a chat with came online.
    case userOnline(PresenceChange)
    /// `user:offline`: a user the recipient shares a chat with closed their last connection.
    case userOffline(PresenceChange)
    /// `message:error`: something the client sent was rejected.
    case messageError(MessageErrorPayload)
    /// `message:read`: another participant's read mark in a chat moved forward.
    case messageRead(ReadMark)
    /// `typing`: another participant started or stopped typing in a chat.
    case typing(TypingChange)

    /// The Socket.IO event name.
    public var name: String {
        switch self {
        case .messageReceived: "message:received"
        case .messageSent: "message:sent"
        case .userOnline: "user:online"
        case .userOffline: "user:offline"
        case .messageError: "message:error"
        case .messageRead: "message:read"
        case .typing: "typing"
        }
    }

    /// The event's argument, ready for a JSON encoder.
    public var payload: any Encodable & Sendable {
        switch self {
        case .messageReceived(let value): value
        case .messageSent(let value): value
        case .userOnline(let value), .userOffline(let value): value
        case .messageError(let value): value
        case .messageRead(let value): value
        case .typing(let value): value
        }
    }
}

/// The payload of `message:received`: the message with its sender populated as `{_id, username}`, plus `isNew`.
public struct ReceivedMessage: Sendable, Hashable, Encodable {
    /// The message.
    public var message: Message
    /// The sender, as other users see them.
    public var sender: User
    /// `true` for a live delivery, `false` for one caught up after the recipient was offline.
    public var isNew: Bool

    /// Creates the payload.
    public init(message: Message, sender: User, isNew: Bool) {
        self.message = message
        self.sender = sender
        self.isNew = isNew
    }

    enum ExtraKeys: String, CodingKey {
        case isNew
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Message.CodingKeys.self)
        try self.message.encodeFields(into: &container)
        try container.encode(self.sender, forKey: .senderID)
        var extra = encoder.container(keyedBy: ExtraKeys.self)
        try extra.encode(self.isNew, forKey: .isNew)
    }
}

/// The payload of `message:sent`.
public struct MessageSent: Sendable, Hashable, Codable {
    /// The stored message's id.
    public var messageID: MessageID
    /// Its chat.
    public var chatID: ChatID
    /// When it was accepted.
    @WireTimestamp public var timestamp: Date
    /// The client's own id for the message, echoed back when it gave one.
    public var clientMessageID: String?

    /// Creates the payload.
    public init(messageID: MessageID, chatID: ChatID, timestamp: Date, clientMessageID: String? = nil) {
        self.messageID = messageID
        self.chatID = chatID
        self.timestamp = timestamp
        self.clientMessageID = clientMessageID
    }

    enum CodingKeys: String, CodingKey {
        case messageID = "messageId"
        case chatID = "chatId"
        case timestamp
        case clientMessageID = "clientMessageId"
    }
}

/// The payload of `user:online` and `user:offline`.
public struct PresenceChange: Sendable, Hashable, Codable {
    /// The user whose presence changed.
    public var userID: UserID
    /// When it changed.
    @WireTimestamp public var timestamp: Date

    /// Creates the payload.
    public init(userID: UserID, timestamp: Date) {
        self.userID = userID
        self.timestamp = timestamp
    }

    enum CodingKeys: String, CodingKey {
        case userID = "userId"
        case timestamp
    }
}

/// The payload of `message:error`.
public struct MessageErrorPayload: Sendable, Hashable, Codable {
    /// The machine-readable reason, one of ``ChatError/Code``.
    public var code: String
    /// A sentence for the developer of the client.
    public var message: String
    /// The chat of the rejected message, when known.
    public var chatID: ChatID?
    /// The client's own id of the rejected message, when it gave one.
    public var clientMessageID: String?
    /// For `rate_limited`: how long to wait before sending again, in milliseconds.
    public var retryAfterMs: Int?

    /// Creates the payload. Ids longer than ``LogSafe/defaultLimit`` bytes are not echoed back (a client could
    /// otherwise make the server send its megabyte-long id back with every refusal).
    public init(code: String, message: String, chatID: ChatID? = nil, clientMessageID: String? = nil, retryAfterMs: Int? = nil) {
        self.code = code
        self.message = message
        self.chatID = chatID.flatMap { $0.rawValue.utf8.count <= LogSafe.defaultLimit ? $0 : nil }
        self.clientMessageID = clientMessageID.flatMap { $0.utf8.count <= LogSafe.defaultLimit ? $0 : nil }
        self.retryAfterMs = retryAfterMs
    }

    /// The payload that reports `error`.
    public init(_ error: ChatError, chatID: ChatID? = nil, clientMessageID: String? = nil) {
        self.init(
            code: error.code.rawValue,
            message: error.message,
            chatID: chatID,
            clientMessageID: clientMessageID,
            retryAfterMs: error.retryAfter.map { Int($0.wholeMilliseconds) }
        )
    }

    enum CodingKeys: String, CodingKey {
        case code, message, retryAfterMs
        case chatID = "chatId"
        case clientMessageID = "clientMessageId"
    }
}
