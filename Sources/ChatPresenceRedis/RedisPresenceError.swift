public import ChatAdapterSupport
public import ChatDomain

/// What went wrong talking to Redis, in Redis' or hiredis' own words. The presence store wraps it as the
/// `underlying` error of a ``ChatDomain/ChatError`` with code `unavailable`, so the engine degrades.
public struct RedisPresenceError: Error, Sendable, CustomStringConvertible {
    /// A kind of failure; the set can grow.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { self.rawValue }

        /// No connection could be made (refused, timed out, unresolvable host).
        public static let connectionFailed = Code(rawValue: "connection_failed")
        /// The connection broke during a command.
        public static let connectionLost = Code(rawValue: "connection_lost")
        /// Redis refused the password, or wants one and none is configured.
        public static let authenticationFailed = Code(rawValue: "authentication_failed")
        /// Redis answered a command with an error.
        public static let serverError = Code(rawValue: "server_error")
        /// Redis answered with something the adapter did not expect.
        public static let protocolError = Code(rawValue: "protocol_error")
        /// A previous attempt failed and the adapter waits before the next one.
        public static let backingOff = Code(rawValue: "backing_off")
    }

    /// The kind of failure.
    public var code: Code
    /// What happened and what to do.
    public var message: String

    /// Whether the same call may succeed later without a configuration change.
    public var isRetriable: Bool {
        self.code != .authenticationFailed && self.code != .protocolError
    }

    public var description: String { "\(self.code): \(self.message)" }
}

extension RedisPresenceError: AdapterError {
    /// `unavailable`: whatever went wrong with Redis, the engine degrades to this node's own presence.
    public var chatError: ChatError { ChatError(.unavailable, "presence store: \(self.message)", underlying: self) }
}
