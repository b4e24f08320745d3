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
    /// Participants who have not accepted the chat yet (when the server asks for acceptance): they get none of its
    /// messages and its other participants do not see their presence, until they accept.
    public var invited: [UserID]
    /// Whether the chat's messages are sealed at rest (`"encrypted": true` at creation, or every chat when the
    /// server encrypts all of them).
    public var encrypted: Bool

    /// The longest chat id, in UTF-8 bytes, the engine looks up; a longer one cannot name a chat.
    public static let maxIDBytes = 256

    /// Creates a chat.
    public init(
        id: ChatID,
        participants: [UserID],
        name: String? = nil,
        lastMessage: MessageID? = nil,
        invited: [UserID] = [],
        encrypted: Bool = false
    ) {
        self.id = id
        self.participants = participants
        self.name = name
        self.lastMessage = lastMessage
        self.invited = invited
        self.encrypted = encrypted
    }

    /// Whether `user` takes part in the chat and has accepted it.
    public func hasAccepted(_ user: UserID) -> Bool {
        self.hasParticipant(user) && !self.invited.contains(user)
    }

    /// Whether `user` takes part in the chat.
    public func hasParticipant(_ user: UserID) -> Bool {
        self.participants.contains(user)
    }

    enum CodingKeys: String, CodingKey {
        case id = "_id"
        case participants, name, lastMessage, invited, encrypted
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.id = try container.decode(ChatID.self, forKey: .id)
        self.participants = try container.decode([UserID].self, forKey: .participants)
        self.name = try container.decodeIfPresent(String.self, forKey: .name)
        self.lastMessage = try container.decodeIfPresent(MessageID.self, forKey: .lastMessage)
        self.invited = try container.decodeIfPresent([UserID].self, forKey: .invited) ?? []
        self.encrypted = try container.decodeIfPresent(Bool.self, forKey: .encrypted) ?? false
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(self.id, forKey: .id)
        try container.encode(self.participants, forKey: .participants)
        try container.encode(self.name, forKey: .name)
        try container.encode(self.lastMessage, forKey: .lastMessage)
        try container.encode(self.invited, forKey: .invited)
        try container.encode(self.encrypted, forKey: .encrypted)
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
