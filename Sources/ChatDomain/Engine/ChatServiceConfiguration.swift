public import Foundation

/// How a client confirms that it received a message.
public enum DeliveryConfirmation: Sendable, Hashable {
    /// The client must acknowledge `message:received` within `timeout`; a client that does not (a half-open or
    /// frozen connection) has the message handed to the offline path, so a ghost connection loses nothing.
    case clientAcknowledgement(timeout: Duration)
    /// A successful socket write counts as delivery, for clients that cannot acknowledge.
    case socketWrite
}

/// The settings of a ``ChatService``; every default is the product's.
public struct ChatServiceConfiguration: Sendable {
    /// This node's id, recorded with each of its connections in the presence store.
    public var nodeID: NodeID = "node-1"
    /// The largest accepted content, in UTF-8 bytes; exactly this many is accepted. Default 64 KiB.
    public var maxContentBytes: Int = 64 * 1024
    /// The message types clients may send.
    public var allowedMessageTypes: Set<MessageType> = [.text, .image, .file, .system]
    /// How a client confirms delivery. Default: a client acknowledgement within 10 seconds.
    public var deliveryConfirmation: DeliveryConfirmation = .clientAcknowledgement(timeout: .seconds(10))
    /// How many caught-up messages may be in flight to a reconnecting client at once. Default 64.
    public var drainWindow: Int = 64
    /// How long an undelivered message is kept for a recipient: the queue's TTL and the store catch-up window.
    /// Default 24 hours.
    public var retention: TimeInterval = 24 * 60 * 60
    /// How many pending messages one catch-up query from the store reads. Default 256.
    public var catchUpBatchSize: Int = 256
    /// How often this node refreshes its presence heartbeat. Keep it well under the presence store's TTL.
    public var presenceHeartbeatInterval: Duration = .seconds(10)
    /// Several nodes (with a ``NodeRelay``): how often this node looks for nodes whose heartbeat expired and
    /// cleans up after them (their inbox moved on, their connections announced offline). Default 5 seconds.
    public var janitorInterval: Duration = .seconds(5)
    /// How long a node's claim to clean up after a dead one lasts; past it another node may take over (the
    /// first one died too, or is stuck). Default 60 seconds.
    public var janitorLease: Duration = .seconds(60)
    /// The most `readBy` updates written in one batch. Default 1,000.
    public var maxDeliveryMarkBatch: Int = 1000
    /// How fast one user may send messages; a send over it gets `rate_limited` with the time to wait. Nil (the
    /// library's default) for no limit; `chatd` sets one.
    public var sendRateLimit: RateLimit?
    /// How many recipient deliveries one user's messages may cause per second (a message to a chat of 1,000
    /// costs 999), so a user cannot fill the queues through one huge chat. Nil for no limit; `chatd` sets one.
    public var fanOutRateLimit: RateLimit?

    /// The most participants a chat may have, its creator included. Default 1,000.
    public var maxChatParticipants = 1000
    /// The most chats a user may be in and still create another. Default 1,000.
    public var maxChatsPerUser = 1000
    /// Whether the people a chat names must accept it (``ChatService/accept(_:user:)``) before it delivers to
    /// them and shares their presence. Default false: a chat is live for everyone it names.
    public var requireChatAcceptance = false

    /// Which chats' messages the store and queue seal at rest (the sealing adapters do it; the engine flags new
    /// chats and refuses `encrypted` chats without it); nil when nothing is encrypted.
    public var encryption: EncryptionScope?
    /// How long a `typing:start` holds without a refresh before the others get `typing: false`.
    public var typingTTL: Duration = .seconds(6)
    /// Typing events each connection may send (`typing:start` and `typing:stop` together).
    public var typingRateLimit = RateLimit(rate: 2, burst: 6)
    /// How many confirmed deliveries (`readBy` updates) and receipt events for the webhook's outbox are kept while
    /// the store cannot take them, and written when it can; past it the oldest are dropped, with a warning.
    /// Default 100,000 of each.
    public var maxRetainedWrites = 100_000

    /// The defaults.
    public init() {}

    /// Checks the settings; the error names the setting that is wrong.
    public func validate() throws(ChatError) {
        if self.maxContentBytes < 1 {
            throw ChatError(.badRequest, "maxContentBytes must be at least 1 (got \(self.maxContentBytes))")
        }
        if self.drainWindow < 1 {
            throw ChatError(.badRequest, "drainWindow must be at least 1 (got \(self.drainWindow))")
        }
        if self.catchUpBatchSize < 1 {
            throw ChatError(.badRequest, "catchUpBatchSize must be at least 1 (got \(self.catchUpBatchSize))")
        }
        if self.maxDeliveryMarkBatch < 1 {
            throw ChatError(.badRequest, "maxDeliveryMarkBatch must be at least 1 (got \(self.maxDeliveryMarkBatch))")
        }
        if self.maxRetainedWrites < self.maxDeliveryMarkBatch {
            throw ChatError(
                .badRequest,
                "maxRetainedWrites must be at least maxDeliveryMarkBatch (\(self.maxDeliveryMarkBatch)); got \(self.maxRetainedWrites)"
            )
        }
        if self.retention <= 0 {
            throw ChatError(.badRequest, "retention must be positive (got \(self.retention) s)")
        }
        try self.sendRateLimit?.validate("sendRateLimit")
        try self.fanOutRateLimit?.validate("fanOutRateLimit")
        if self.maxChatParticipants < 2 {
            throw ChatError(.badRequest, "maxChatParticipants must be at least 2 (got \(self.maxChatParticipants))")
        }
        if self.maxChatsPerUser < 1 {
            throw ChatError(.badRequest, "maxChatsPerUser must be at least 1 (got \(self.maxChatsPerUser))")
        }
        if self.janitorInterval <= .zero || self.janitorLease <= .zero {
            throw ChatError(.badRequest, "janitorInterval and janitorLease must be positive (got \(self.janitorInterval), \(self.janitorLease))")
        }
        if self.typingTTL <= .zero {
            throw ChatError(.badRequest, "typingTTL must be positive (got \(self.typingTTL))")
        }
        try self.typingRateLimit.validate("typingRateLimit")
        if self.allowedMessageTypes.isEmpty {
            throw ChatError(.badRequest, "allowedMessageTypes must not be empty")
        }
    }
}
