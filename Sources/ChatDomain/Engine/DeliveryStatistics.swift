/// Counters of what the engine did since it started; read them for metrics.
public struct DeliveryStatistics: Sendable, Hashable {
    /// Messages accepted and stored.
    public var messagesSent = 0
    /// Live deliveries confirmed by a client.
    public var deliveredLive = 0
    /// Caught-up deliveries from the offline queue confirmed by a client.
    public var deliveredFromQueue = 0
    /// Caught-up deliveries from the store (messages the queue never held) confirmed by a client.
    public var deliveredFromStore = 0
    /// Queue entries written.
    public var queued = 0
    /// Entries the queue refused because it was full; they stay pending in the store.
    public var queueRejected = 0
    /// Entries that expired undelivered.
    public var expired = 0
    /// Entries the queue dead-lettered for another reason.
    public var failed = 0
    /// Live deliveries a client did not confirm, handed to the offline path.
    public var unconfirmedLive = 0
    /// Deliveries that failed during a drain and were returned to the queue.
    public var returnedToQueue = 0
    /// Sends rejected with an error.
    public var rejectedSends = 0
    /// Sends rejected because the sender went over a rate limit (also counted in ``rejectedSends``).
    public var rateLimitedSends = 0
    /// Entries forwarded to another node's inbox, for a recipient connected there (``NodeRelay``).
    public var forwarded = 0
    /// Entries other nodes forwarded here.
    public var relayedIn = 0
    /// Entries a node's inbox refused (no such inbox, or a full one); they took the offline path instead.
    public var relayRefused = 0
    /// Entries this node moved out of dead nodes' inboxes to their recipients' current node or offline queue.
    public var janitorMoved = 0
    /// Dead nodes this node cleaned up after.
    public var nodesCleanedUp = 0
    /// Read marks that moved forward (`message:read`).
    public var readMarks = 0

    /// All counters at zero.
    public init() {}
}

/// The state of one backing service as the engine sees it.
public enum ComponentHealth: String, Sendable, Hashable {
    /// Answering.
    case ok
    /// Unreachable, and the engine is working around it.
    case degraded
    /// Unreachable, and the engine cannot do its job without it.
    case down
}

/// The engine's view of its backing services.
public struct HealthReport: Sendable, Hashable {
    /// The message store; `down` means sends fail.
    public var store: ComponentHealth
    /// The offline queue; `degraded` means offline recipients are caught up from the store instead.
    public var queue: ComponentHealth
    /// The presence store; `degraded` means this node uses only its own connections.
    public var presence: ComponentHealth
}
