/// A conversation between a fixed set of participants.
public struct Chat: Hashable, Sendable, Codable {
    /// The chat's id (`_id`).
    public var id: ChatID
    /// Everyone who may read and write in the chat.
    public var participants: [UserID]
    /// An optional display name.
    public var name: String?
    /// The id of the newest message, if any.
    public var lastMessage: MessageID?

    /// The longest chat id, in UTF-8 bytes, the engine looks up; a longer one cannot name a chat.
    public static let maxIDBytes = 256

    /// Creates a chat.
    public init(id: ChatID, participants: [UserID], name: String? = nil, lastMessage: MessageID? = nil) {
        self.id = id
        self.participants = participants
        self.name = name
        self.lastMessage = lastMessage
    }

    /// Whether `user` takes part in the chat.
    public func hasParticipant(_ user: UserID) -> Bool {
        self.participants.contains(user)
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id"
        case participants, name, lastMessage
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(self.id, forKey: .id)
        try container.encode(self.participants, forKey: .participants)
        try container.encode(self.name, forKey: .name)
        try container.encode(self.lastMessage, forKey: .lastMessage)
    }
}

/// A user as other users see them.
public struct User: Hashable, Sendable, Codable {
    /// The user's id (`_id`).
    public var id: UserID
    /// The display name.
    public var username: String

    /// Creates a user.
    public init(id: UserID, username: String) {
        self.id = id
        self.username = username
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id"
        case username
    }
}
