/// Where MongoDB is and how the store uses it.
public struct MongoStoreConfiguration: Sendable {
    /// The connection string (`MONGODB_URI`), for example `mongodb://127.0.0.1:27017/chatd`. Never logged whole:
    /// it may hold a password.
    public var uri: String
    /// The database; default: the one the URI names, else `chatd`.
    public var database: String?
    /// How long a call waits for a reachable server before failing with `unavailable`. Default 2 seconds.
    public var serverSelectionTimeout: Duration = .seconds(2)
    /// Threads (and pooled clients) for the blocking driver calls. Default 4.
    public var threads: Int = 4
    /// The most messages one history or catch-up page returns. Default 500.
    public var maxPageSize: Int = 500
    /// The most receipt events the webhook's outbox collection keeps; past it the oldest are dropped.
    public var receiptOutboxCapacity: Int = 100_000

    /// Settings for `uri`, others at their defaults.
    public init(uri: String) {
        self.uri = uri
    }
}
