import ChatAdapterSupport
public import ChatDomain
public import Logging
public import ServiceLifecycle

/// A ``ChatDomain/PresenceStore`` on Redis, through hiredis.
///
/// A user is online while one of their connections is recorded under a node whose heartbeat key is alive; a
/// node that stops heartbeating (crashed, partitioned) takes its users offline after
/// ``RedisPresenceConfiguration/presenceTTL``, and a live node's janitor then removes its entries (the set
/// `<prefix>:nodes` and each node's `<prefix>:node-users:<node>` say where to look; `<prefix>:janitor:<node>`
/// is the claim). A batch lookup is one round trip (a Lua script), whatever the number of users.
///
/// hiredis blocks, so every call runs on a thread of this store's own, never on Swift's cooperative pool. While
/// Redis is unreachable calls fail fast with ``ChatDomain/ChatError`` code `unavailable` (reconnects back off
/// up to ``RedisPresenceConfiguration/reconnectBackoff``); on every reconnect the store authenticates, selects
/// the database and writes this node's live connections again, since a restarted Redis has lost them.
///
/// Run it as a `Service` (or call ``close()``) so its thread stops.
public final class RedisPresenceStore: PresenceStore, Service {
    private let threads: BlockingThreads
    private let connection: RedisConnection
    private let logger: Logger
    /// The settings the store was created with.
    public let configuration: RedisPresenceConfiguration

    /// Creates the store; it connects on first use.
    public init(configuration: RedisPresenceConfiguration, logger: Logger) {
        self.logger = logger
        self.configuration = configuration
        self.connection = RedisConnection(configuration: configuration, logger: logger)
        // One thread: the hiredis context is confined to it.
        self.threads = BlockingThreads(role: "presence store")
    }

    public func register(_ record: PresenceRecord) async throws {
        try await self.perform { try $0.register(record) }
    }

    public func unregister(connection: ConnectionID, of user: UserID, node: NodeID) async throws {
        try await self.perform { try $0.unregister(connection: connection, of: user, node: node) }
    }

    public func lookup(_ users: [UserID]) async throws -> [UserID: [PresenceRecord]] {
        try await self.perform { try $0.lookup(users) }
    }

    public func heartbeat(node: NodeID) async throws {
        try await self.perform { try $0.heartbeat(node: node) }
    }

    public func claimExpiredNodes(for claimer: NodeID, lease: Duration) async throws -> [NodeID] {
        try await self.perform { try $0.claimExpiredNodes(for: claimer, lease: lease) }
    }

    public func removeStaleConnections(of node: NodeID) async throws -> [UserID] {
        try await self.perform { try $0.removeStaleConnections(of: node) }
    }

    public func forgetExpiredNode(_ node: NodeID) async throws {
        try await self.perform { try $0.forgetExpiredNode(node) }
    }

    /// How many round trips to Redis this store made (for tests and benchmarks).
    public func roundTripCount() async throws -> Int {
        try await self.perform { $0.roundTrips }
    }

    /// Waits for graceful shutdown (or cancellation), then closes the connection and stops the thread.
    public func run() async throws {
        try? await gracefulShutdown()
        await self.close()
    }

    /// Closes the connection and stops the store's thread; later calls fail with `unavailable`.
    public func close() async {
        await self.threads.runIfRunning { [connection] in connection.close() }
        await self.threads.shutDown()
    }

    private func perform<Result: Sendable>(
        _ body: @escaping @Sendable (RedisConnection) throws -> Result
    ) async throws(ChatError) -> Result {
        try await self.threads.run { [connection] in try body(connection) }
    }
}
