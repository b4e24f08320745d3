public import Foundation

/// Receipt events waiting to be posted to the receipts webhook, oldest first. Where the store is durable the
/// outbox is too (a table or collection next to the messages), so a restart loses none of them.
///
/// Bounded: an append past ``capacity`` removes the oldest events to make room and reports how many.
public protocol ReceiptOutbox: Sendable {
    /// The most events the outbox holds.
    var capacity: Int { get }

    /// Appends `events` (ids are unique and grow with time); returns how many of the oldest were removed to stay
    /// within ``capacity``.
    func append(_ events: [ReceiptEvent]) async throws -> Int

    /// The oldest events, at most `limit`, oldest first.
    func oldest(_ limit: Int) async throws -> [ReceiptEvent]

    /// Removes the events with these ids (posted, or given up on); unknown ids are ignored.
    func remove(_ ids: [MessageID]) async throws

    /// How many events wait.
    func count() async throws -> Int
}

/// A change in a message's state for one recipient, as the receipts webhook reports it. Carries ids and a time,
/// never content.
public struct ReceiptEvent: Hashable, Sendable, Codable {
    /// What happened.
    public struct Kind: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { self.rawValue }

        /// The recipient's client received the message.
        public static let delivered = Kind(rawValue: "delivered")
        /// The recipient read the chat up to and including the message (a read mark: older messages are read too).
        public static let read = Kind(rawValue: "read")
        /// The recipient did not come back within the retention window.
        public static let expired = Kind(rawValue: "expired")
        /// The message could not be delivered and will not be retried.
        public static let failed = Kind(rawValue: "failed")
    }

    /// The event's own id, stable across retries, so the receiver can deduplicate.
    public var id: MessageID
    /// What happened.
    public var kind: Kind
    /// The message.
    public var messageID: MessageID
    /// Its chat.
    public var chatID: ChatID
    /// The recipient (for `read`, the reader).
    public var userID: UserID
    /// When it happened.
    @WireTimestamp public var at: Date

    /// Creates an event.
    public init(id: MessageID, kind: Kind, messageID: MessageID, chatID: ChatID, userID: UserID, at: Date) {
        self.id = id
        self.kind = kind
        self.messageID = messageID
        self.chatID = chatID
        self.userID = userID
        self.at = at
    }

    enum CodingKeys: String, CodingKey {
        case id
        case kind = "type"
        case messageID = "messageId"
        case chatID = "chatId"
        case userID = "userId"
        case at
    }
}
