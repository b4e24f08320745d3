public import ChatAdapterSupport
public import ChatDomain

/// What went wrong talking to MongoDB, with the server's own code and words when it answered. The store wraps it
/// as the `underlying` error of a ``ChatDomain/ChatError``.
public struct MongoStoreError: Error, Sendable, CustomStringConvertible {
    /// A kind of failure; the set can grow.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { self.rawValue }

        /// No server could be selected within the timeout, or the connection failed.
        public static let unavailable = Code(rawValue: "unavailable")
        /// The server answered with an error (see ``MongoStoreError/serverCode``).
        public static let serverError = Code(rawValue: "server_error")
        /// A stored document lacks a field or has one of the wrong type.
        public static let badDocument = Code(rawValue: "bad_document")
        /// The connection string is not valid.
        public static let badURI = Code(rawValue: "bad_uri")
    }

    /// The kind of failure.
    public var code: Code
    /// What happened and what to do.
    public var message: String
    /// The server's error code, when it answered with one (11000 is a duplicate key).
    public var serverCode: Int?

    /// Whether the same call may succeed later.
    public var isRetriable: Bool { self.code == .unavailable }

    public var description: String {
        if let serverCode { "\(self.code) (\(serverCode)): \(self.message)" } else { "\(self.code): \(self.message)" }
    }
}

extension MongoStoreError: AdapterError {
    /// `unavailable` when MongoDB could not be reached; `internal_error` when it answered with an error or its
    /// answer was unreadable (not an outage: retrying will not help).
    public var chatError: ChatError {
        ChatError(self.code == .unavailable ? .unavailable : .internalError, self.message, underlying: self)
    }
}
