public import Foundation

/// Durable per-recipient queues of messages for users who were not reachable when the message was accepted.
///
/// Entries expire after the queue's TTL, a full queue refuses new entries (never drops old ones), and expired or
/// refused entries are dead-lettered and reported through ``deadLetters()``. Implementations throw ``ChatError``
/// with code ``ChatError/Code/unavailable`` when the broker cannot be reached, quickly.
public protocol MessageQueue: Sendable {
    /// Appends `entries`, all for `user`, in order, and returns once the queue holds them durably.
    ///
    /// - Returns: the ids of the entries the queue refused because it is full (in order, always a suffix of
    ///   `entries` in a FIFO queue); these were dead-lettered with ``DeadLetter/Reason/rejected``.
    func enqueue(_ entries: [QueueEntry], for user: UserID) async throws -> [MessageID]

    /// Opens a consumer of `user`'s queue that holds at most `prefetch` unacknowledged deliveries.
    func consumer(for user: UserID, prefetch: Int) async throws -> any QueueConsumer

    /// The number of ready and unacknowledged entries in `user`'s queue.
    func depth(for user: UserID) async throws -> QueueDepth

    /// The stream of dead-lettered entries; it has one consumer, the delivery engine.
    func deadLetters() -> AsyncStream<DeadLetter>

    /// Publishes status changes for analytics; bounded and best effort (older events may be dropped).
    func publishDeliveryEvents(_ events: [DeliveryEvent]) async throws
}

/// Reads one user's queue. Entries are handed out in queue order; each must be acknowledged or negatively
/// acknowledged. Closing the consumer returns every unacknowledged entry to the queue.
public protocol QueueConsumer: Sendable {
    /// The next entry, or nil when the queue has no ready entry right now.
    func next() async throws -> QueueDelivery?
    /// Removes a delivered entry from the queue.
    func ack(_ tag: DeliveryTag) async throws
    /// Removes delivered entries from the queue, in the order given; a broker may do it in one step.
    func ack(_ tags: [DeliveryTag]) async throws
    /// Returns a delivered entry to the queue, at its place, flagged redelivered.
    func nack(_ tag: DeliveryTag) async throws
    /// Stops consuming; unacknowledged entries return to the queue.
    func close() async
}

extension QueueConsumer {
    /// Acknowledges one by one.
    public func ack(_ tags: [DeliveryTag]) async throws {
        for tag in tags { try await self.ack(tag) }
    }
}

/// One message waiting for one recipient.
public struct QueueEntry: Sendable, Hashable, Codable {
    /// The message, as it was stored.
    public var message: Message
    /// The message's sender, as the recipient will see them.
    public var sender: User
    /// The recipient.
    public var recipient: UserID
    /// When it was queued.
    @WireTimestamp public var enqueuedAt: Date
    /// Whether another node forwarded it here (``NodeRelay``): such an entry is delivered here or queued, never
    /// forwarded again. Not part of the entry's JSON.
    public var relayed = false

    /// Creates an entry.
    public init(message: Message, sender: User, recipient: UserID, enqueuedAt: Date) {
        self.message = message
        self.sender = sender
        self.recipient = recipient
        self.enqueuedAt = enqueuedAt
    }

    enum CodingKeys: String, CodingKey {
        case message, sender, recipient, enqueuedAt
    }
}

/// The queue's handle of one delivery, used to acknowledge it.
public struct DeliveryTag: Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { String(self.rawValue) }
}

/// An entry handed to a consumer.
public struct QueueDelivery: Sendable {
    /// The entry.
    public var entry: QueueEntry
    /// The handle to acknowledge it with.
    public var tag: DeliveryTag
    /// Whether the entry was handed out before and returned unacknowledged.
    public var redelivered: Bool

    /// Creates a delivery.
    public init(entry: QueueEntry, tag: DeliveryTag, redelivered: Bool) {
        self.entry = entry
        self.tag = tag
        self.redelivered = redelivered
    }
}

/// How full a user's queue is.
public struct QueueDepth: Sendable, Hashable {
    /// Entries waiting to be handed out.
    public var ready: Int
    /// Entries handed out and not yet acknowledged.
    public var unacknowledged: Int
    /// Consumers reading the queue.
    public var consumers: Int

    /// Creates a depth.
    public init(ready: Int, unacknowledged: Int, consumers: Int) {
        self.ready = ready
        self.unacknowledged = unacknowledged
        self.consumers = consumers
    }

    /// Ready plus unacknowledged.
    public var total: Int { self.ready + self.unacknowledged }
}

/// An entry the queue gave up on.
public struct DeadLetter: Sendable, Hashable {
    /// Why the queue gave up.
    public struct Reason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { self.rawValue }

        /// Older than the queue's TTL.
        public static let expired = Reason(rawValue: "expired")
        /// Refused because the queue was full.
        public static let rejected = Reason(rawValue: "rejected")
        /// Dropped for another reason the broker gave.
        public static let failed = Reason(rawValue: "failed")
    }

    /// The entry.
    public var entry: QueueEntry
    /// Why.
    public var reason: Reason
    /// When.
    public var at: Date

    /// Creates a dead letter.
    public init(entry: QueueEntry, reason: Reason, at: Date) {
        self.entry = entry
        self.reason = reason
        self.at = at
    }
}
