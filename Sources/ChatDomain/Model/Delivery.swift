public import Foundation

/// Where a message stands for one recipient.
public struct DeliveryStatus: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }

    public var description: String { self.rawValue }

    /// Accepted and stored; on its way (live or queued).
    public static let sent = DeliveryStatus(rawValue: "sent")
    /// The recipient's client received it.
    public static let delivered = DeliveryStatus(rawValue: "delivered")
    /// It could not be delivered and will not be retried (dead-lettered by the queue).
    public static let failed = DeliveryStatus(rawValue: "failed")
    /// The recipient did not come back within the retention window (24 h by default).
    public static let expired = DeliveryStatus(rawValue: "expired")
}

/// The delivery status of one message for one recipient.
public struct DeliveryReceipt: Hashable, Sendable, Codable {
    /// The recipient.
    public var userID: UserID
    /// Where the message stands for them.
    public var status: DeliveryStatus
    /// When the status was reached.
    @WireTimestamp public var at: Date
    /// When the recipient's read mark first covered the message; nil until then (`readAt: null` on the wire).
    public var readAt: Date?

    /// Creates a receipt.
    public init(userID: UserID, status: DeliveryStatus, at: Date, readAt: Date? = nil) {
        self.userID = userID
        self.status = status
        self.at = at
        self.readAt = readAt.map(Timestamp.truncatedToMilliseconds)
    }

    enum CodingKeys: String, CodingKey {
        case userID = "userId"
        case status, at, readAt
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.userID = try container.decode(UserID.self, forKey: .userID)
        self.status = try container.decode(DeliveryStatus.self, forKey: .status)
        self._at = try container.decode(WireTimestamp.self, forKey: .at)
        self.readAt = try container.decodeIfPresent(WireTimestamp.self, forKey: .readAt)?.wrappedValue
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(self.userID, forKey: .userID)
        try container.encode(self.status, forKey: .status)
        try container.encode(self._at, forKey: .at)
        try container.encode(self.readAt.map { WireTimestamp(wrappedValue: $0) }, forKey: .readAt)
    }
}

extension DeliveryReceipt {
    /// The receipts of `message` for each of `recipients`: `delivered` when in `readBy`, else the recorded final
    /// outcome (`expired`, `failed`), else `sent`; each with the time the recipient's read mark covered the message,
    /// from `readAt`. Stores share this rule.
    public static func receipts(
        of message: Message,
        recipients: [UserID],
        outcomes: [DeliveryReceipt],
        readAt: [UserID: Date] = [:]
    ) -> [DeliveryReceipt] {
        var seen = Set<UserID>()
        return recipients.filter { $0 != message.senderID && seen.insert($0).inserted }.map { user in
            var receipt: DeliveryReceipt
            if let read = message.readBy.first(where: { $0.userID == user }) {
                receipt = DeliveryReceipt(userID: user, status: .delivered, at: read.readAt)
            } else {
                receipt = outcomes.last { $0.userID == user } ?? DeliveryReceipt(userID: user, status: .sent, at: message.createdAt)
            }
            receipt.readAt = readAt[user].map(Timestamp.truncatedToMilliseconds)
            return receipt
        }
    }
}

/// A change of one message's delivery status for one recipient, published for analytics (RabbitMQ's
/// `message_delivery` queue).
public struct DeliveryEvent: Hashable, Sendable, Codable {
    /// The message.
    public var messageID: MessageID
    /// The recipient.
    public var userID: UserID
    /// The new status.
    public var status: DeliveryStatus
    /// When it changed.
    @WireTimestamp public var timestamp: Date

    /// Creates an event.
    public init(messageID: MessageID, userID: UserID, status: DeliveryStatus, timestamp: Date) {
        self.messageID = messageID
        self.userID = userID
        self.status = status
        self.timestamp = timestamp
    }

    enum CodingKeys: String, CodingKey {
        case messageID = "messageId"
        case userID = "userId"
        case status, timestamp
    }
}

/// One recipient's confirmed receipt of one message: the store adds the recipient to `readBy` and clears them
/// from the message's pending recipients in the same write.
public struct DeliveryMark: Hashable, Sendable {
    /// The delivered message.
    public var messageID: MessageID
    /// The recipient who received it.
    public var userID: UserID
    /// When the client confirmed it.
    public var at: Date

    /// Creates a mark.
    public init(messageID: MessageID, userID: UserID, at: Date) {
        self.messageID = messageID
        self.userID = userID
        self.at = Timestamp.truncatedToMilliseconds(at)
    }
}

/// That one connection of a user is held by one node.
public struct PresenceRecord: Hashable, Sendable, Codable {
    /// The user.
    public var userID: UserID
    /// The connection (socket).
    public var connectionID: ConnectionID
    /// The node holding the connection, so a message can be routed to it.
    public var nodeID: NodeID
    /// When the connection was opened.
    @WireTimestamp public var since: Date

    /// Creates a record.
    public init(userID: UserID, connectionID: ConnectionID, nodeID: NodeID, since: Date) {
        self.userID = userID
        self.connectionID = connectionID
        self.nodeID = nodeID
        self.since = since
    }
}
