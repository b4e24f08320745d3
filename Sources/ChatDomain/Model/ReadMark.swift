public import Foundation

/// How far one user has read one chat: every message of the chat up to and including ``messageID``.
///
/// It is also the payload of the `message:read` event the other participants get, and (without `userId`) of the
/// reader's acknowledgement.
public struct ReadMark: Hashable, Sendable, Codable {
    /// The chat.
    public var chatID: ChatID
    /// The reader.
    public var userID: UserID
    /// The newest message read; every older message of the chat counts as read too.
    public var messageID: MessageID
    /// When the reader got this far.
    @WireTimestamp public var readAt: Date

    /// Creates a mark.
    public init(chatID: ChatID, userID: UserID, messageID: MessageID, readAt: Date) {
        self.chatID = chatID
        self.userID = userID
        self.messageID = messageID
        self.readAt = readAt
    }

    enum CodingKeys: String, CodingKey {
        case chatID = "chatId"
        case userID = "userId"
        case messageID = "messageId"
        case readAt
    }
}

/// What one user has not read in one chat, and how far each participant has read it (`GET /api/chats`).
public struct ChatReadState: Hashable, Sendable {
    /// Messages of the chat from others that the user's read mark does not cover.
    public var unreadCount: Int
    /// Each participant's read mark, for those who have one.
    public var readUpTo: [UserID: MessageID]

    /// Creates a state.
    public init(unreadCount: Int, readUpTo: [UserID: MessageID]) {
        self.unreadCount = unreadCount
        self.readUpTo = readUpTo
    }
}

/// The payload of `typing`: a participant started or stopped typing in a chat.
public struct TypingChange: Hashable, Sendable, Codable {
    /// The chat.
    public var chatID: ChatID
    /// Who is typing.
    public var userID: UserID
    /// `true` while they type; `false` once they stopped, went quiet for the typing TTL, or disconnected.
    public var typing: Bool

    /// Creates the payload.
    public init(chatID: ChatID, userID: UserID, typing: Bool) {
        self.chatID = chatID
        self.userID = userID
        self.typing = typing
    }

    enum CodingKeys: String, CodingKey {
        case chatID = "chatId"
        case userID = "userId"
        case typing
    }
}
