/// The error every ChatDomain operation throws: a stable ``code`` for machines, a ``message`` that says what to
/// do, and the ``underlying`` cause.
public struct ChatError: Error, Sendable, CustomStringConvertible {
    /// A machine-readable error code; the set can grow without breaking clients that switch on the raw value.
    public struct Code: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { self.rawValue }

        /// The chat does not exist.
        public static let chatNotFound = Code(rawValue: "chat_not_found")
        /// The user is not a participant of the chat.
        public static let notAParticipant = Code(rawValue: "not_a_participant")
        /// The content is empty or only white space.
        public static let emptyContent = Code(rawValue: "empty_content")
        /// The content is over the configured size in UTF-8 bytes.
        public static let contentTooLarge = Code(rawValue: "content_too_large")
        /// The message type is not in the allowed set.
        public static let invalidMessageType = Code(rawValue: "invalid_message_type")
        /// The request is malformed: a missing field, a wrong type, an unknown event.
        public static let badRequest = Code(rawValue: "bad_request")
        /// The message store could not be reached; nothing was stored, the client may retry.
        public static let storeUnavailable = Code(rawValue: "store_unavailable")
        /// The recipient's offline queue is full.
        public static let queueFull = Code(rawValue: "queue_full")
        /// The client is not authenticated, or its token is invalid.
        public static let unauthorized = Code(rawValue: "unauthorized")
        /// A backing service (queue, presence, store) is unreachable; retry later.
        public static let unavailable = Code(rawValue: "unavailable")
        /// The connection is closed or not known to this node.
        public static let connectionClosed = Code(rawValue: "connection_closed")
        /// The client did not acknowledge in time.
        public static let timeout = Code(rawValue: "timeout")
        /// The user sends faster than the server allows; ``ChatError/retryAfter`` says when to try again.
        public static let rateLimited = Code(rawValue: "rate_limited")
        /// A recipient has blocked the sender.
        public static let blocked = Code(rawValue: "blocked")
        /// The store answered, with an error that is not an outage: a malformed stored document, a write it
        /// refused. Nothing was stored; retrying will not help; the server's log names the document or command.
        public static let internalError = Code(rawValue: "internal_error")
        /// The user is in as many chats as the server allows and may not create another.
        public static let tooManyChats = Code(rawValue: "too_many_chats")
        /// No message has the id given.
        public static let messageNotFound = Code(rawValue: "message_not_found")
        /// A stored message cannot be opened: sealed with a key this server does not have, or tampered with.
        public static let messageUnreadable = Code(rawValue: "message_unreadable")
    }

    /// What went wrong, for machines.
    public var code: Code
    /// What went wrong and what to do, for people.
    public var message: String
    /// The cause, when another error led to this one.
    public var underlying: (any Error)?
    /// For ``Code/rateLimited``: how long to wait before retrying.
    public var retryAfter: Duration?

    /// Creates an error.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil, retryAfter: Duration? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
        self.retryAfter = retryAfter
    }

    /// Whether retrying the same operation later may succeed.
    public var isRetriable: Bool {
        [.storeUnavailable, .unavailable, .timeout, .queueFull, .rateLimited].contains(self.code)
    }

    public var description: String {
        if let underlying { "\(self.code): \(self.message) (\(underlying))" } else { "\(self.code): \(self.message)" }
    }
}
