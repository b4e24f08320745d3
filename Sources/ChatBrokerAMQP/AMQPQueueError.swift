public import ChatAdapterSupport
public import ChatDomain

/// What went wrong talking to RabbitMQ, in rabbitmq-c's or the broker's own words. The queue wraps it as the
/// `underlying` error of a ``ChatDomain/ChatError`` with code `unavailable`, so the engine degrades.
public struct AMQPQueueError: Error, Sendable, CustomStringConvertible {
    /// A kind of failure; the set can grow.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { self.rawValue }

        /// No connection could be made, or the login failed.
        public static let connectionFailed = Code(rawValue: "connection_failed")
        /// The connection broke.
        public static let connectionLost = Code(rawValue: "connection_lost")
        /// The broker closed the channel (its reply code and text are in the message).
        public static let channelClosed = Code(rawValue: "channel_closed")
        /// The broker did not confirm a publish in time.
        public static let confirmTimeout = Code(rawValue: "confirm_timeout")
        /// The broker refused a publish (nack) for a reason other than a full queue.
        public static let publishRefused = Code(rawValue: "publish_refused")
        /// A previous attempt failed and the adapter waits before the next one.
        public static let backingOff = Code(rawValue: "backing_off")
        /// A consumer belongs to a connection that has since been replaced; its deliveries went back to the queue.
        public static let staleConsumer = Code(rawValue: "stale_consumer")
    }

    /// The kind of failure.
    public var code: Code
    /// What happened and what to do.
    public var message: String

    public var description: String { "\(self.code): \(self.message)" }
}

extension AMQPQueueError: AdapterError {
    /// `unavailable`: whatever went wrong with RabbitMQ, the engine degrades and catches up from the store.
    public var chatError: ChatError { ChatError(.unavailable, "offline queue: \(self.message)", underlying: self) }
}
