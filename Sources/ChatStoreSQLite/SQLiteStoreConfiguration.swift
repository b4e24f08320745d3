public import Foundation

/// The settings of a ``SQLiteChatStore``.
public struct SQLiteStoreConfiguration: Sendable {
    /// How hard a commit waits for the disk.
    public enum Synchronous: String, Sendable {
        /// A commit survives a crash of chatd (the default): the log is synced at checkpoints, so a power loss
        /// can take the last commits back.
        case normal = "NORMAL"
        /// A commit survives a power loss too: the log is synced at every commit (slower).
        case full = "FULL"
    }

    /// The database file; its directory must exist and be writable.
    public var path: String
    /// `synchronous` for every commit. Default ``Synchronous/normal``.
    public var synchronous: Synchronous = .normal
    /// How long a queued entry waits for its recipient before it expires. Default 24 hours.
    public var queueTTL: Duration = .seconds(24 * 3600)
    /// The most entries one user's queue holds; more are refused. Default 100,000.
    public var queueMaxLength: Int = 100_000
    /// Delivery events are kept this long. Default 7 days.
    public var deliveryEventRetention: Duration = .seconds(7 * 24 * 3600)
    /// At most this many delivery events are kept (the oldest go first). Default 50,000.
    public var deliveryEventLimit: Int = 50_000
    /// The most writes one transaction (one commit) takes. Default 1,000.
    public var maxWritesPerCommit: Int = 1_000
    /// How often expired queue entries are looked for. Default 1 second.
    public var expiryInterval: Duration = .seconds(1)
    /// The most receipt events the webhook's outbox keeps; past it the oldest are dropped.
    public var receiptOutboxCapacity: Int = 100_000

    /// The settings for the database at `path`.
    public init(path: String) {
        self.path = path
    }

    /// The settings for `chatd.sqlite` in `directory`.
    public init(directory: URL) {
        self.path = directory.appendingPathComponent("chatd.sqlite").path
    }
}
