public import ChatAdapterSupport
public import ChatDomain

/// What went wrong with the SQLite database, with SQLite's own result code and words. The store wraps it as the
/// `underlying` error of a ``ChatDomain/ChatError``.
public struct SQLiteStoreError: Error, Sendable, CustomStringConvertible {
    /// A kind of failure; the set can grow.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { self.rawValue }

        /// The disk is full, an I/O call failed or the database stayed locked: the same call may succeed later.
        public static let unavailable = Code(rawValue: "unavailable")
        /// The file cannot be created, opened or written (permissions, a missing or read-only directory).
        public static let cannotOpen = Code(rawValue: "cannot_open")
        /// The file is not a chatd database: corrupt, another program's database, or not SQLite at all.
        public static let notChatdDatabase = Code(rawValue: "not_chatd_database")
        /// The file was written by a newer chatd, whose schema this one does not know.
        public static let newerSchema = Code(rawValue: "newer_schema")
        /// SQLite refused a statement (a bug, or a stored row this version cannot read).
        public static let statementFailed = Code(rawValue: "statement_failed")
        /// Another process holds the database (one chatd per file).
        public static let inUse = Code(rawValue: "in_use")
        /// The store was closed.
        public static let closed = Code(rawValue: "closed")
    }

    /// The kind of failure.
    public var code: Code
    /// What happened and what to do.
    public var message: String
    /// SQLite's extended result code, when SQLite reported one.
    public var resultCode: Int32?

    /// Creates an error.
    public init(code: Code, message: String, resultCode: Int32? = nil) {
        self.code = code
        self.message = message
        self.resultCode = resultCode
    }

    public var description: String {
        if let resultCode { "\(self.code) (SQLite \(resultCode)): \(self.message)" } else { "\(self.code): \(self.message)" }
    }
}

extension SQLiteStoreError: AdapterError {
    /// `unavailable` for a full disk, an I/O failure, a lock or a closed store (the same call may succeed later);
    /// `internal_error` otherwise.
    public var chatError: ChatError {
        let transient: Set<Code> = [.unavailable, .closed, .cannotOpen]
        return ChatError(transient.contains(self.code) ? .unavailable : .internalError, self.message, underlying: self)
    }
}
