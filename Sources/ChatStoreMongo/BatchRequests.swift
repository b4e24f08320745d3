import ChatDomain

/// A store call that waits in a ``ChatAdapterSupport/PumpQueue`` of its kind and is answered in batches (one
/// command for every call of the batch), or with an error.
protocol BatchRequest: Sendable {
    associatedtype Answer: Sendable
    /// At most this many calls per batch.
    static var maxBatchCount: Int { get }
    /// At most this much ``batchWeight`` per batch (a batch holds at least one call).
    static var maxBatchWeight: Int { get }
    /// What this call weighs against ``maxBatchWeight``.
    var batchWeight: Int { get }
    /// Called once, on a store thread.
    var complete: @Sendable (Result<Answer, ChatError>) -> Void { get }
}

extension BatchRequest {
    static var maxBatchWeight: Int { .max }
    var batchWeight: Int { 1 }

    /// Answers the call with `error`.
    func fail(_ error: ChatError) {
        self.complete(.failure(error))
    }
}

/// One message to insert, and who to tell. At most 500 documents, 8 MiB of them, per `insert` (MongoDB takes
/// commands up to 16 MiB).
struct InsertRequest: BatchRequest {
    static let maxBatchCount = 500
    static let maxBatchWeight = 8 << 20
    var batchWeight: Int { self.document.count }

    /// How the server took one document of a batch.
    enum Write: Sendable {
        case inserted
        /// Refused as a duplicate key (11000): the error as the server wrote it, for the caller to look into.
        case duplicateKey(BSONDocument)
    }

    /// The message's document, as BSON bytes.
    var document: [UInt8]
    var chatID: ChatID
    var messageID: MessageID
    var complete: @Sendable (Result<Write, ChatError>) -> Void
}

/// One chat to look up, and who to tell. At most 500 per `find`.
struct ChatLookup: BatchRequest {
    static let maxBatchCount = 500

    var id: ChatID
    var complete: @Sendable (Result<Chat?, ChatError>) -> Void
}

/// Which of `users` block `sender`, and who to tell. At most 100 lookups and 10,000 users per `find`.
struct BlockerLookup: BatchRequest {
    static let maxBatchCount = 100
    static let maxBatchWeight = 10_000
    var batchWeight: Int { self.users.count }

    var sender: UserID
    var users: [UserID]
    var complete: @Sendable (Result<Set<UserID>, ChatError>) -> Void
}
