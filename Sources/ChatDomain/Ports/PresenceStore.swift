/// Who is online, and on which node. A user is online while at least one of their connections is held by a live
/// node; a node that stops calling ``heartbeat(node:)`` takes its users offline after the store's TTL.
///
/// Implementations throw ``ChatError`` with code ``ChatError/Code/unavailable`` when the store cannot be reached.
public protocol PresenceStore: Sendable {
    /// Records that a node holds a connection of a user.
    func register(_ record: PresenceRecord) async throws

    /// Forgets a connection.
    func unregister(connection: ConnectionID, of user: UserID, node: NodeID) async throws

    /// The live connections of each user in `users`, in one round trip; users with none map to `[]`.
    func lookup(_ users: [UserID]) async throws -> [UserID: [PresenceRecord]]

    /// Tells the store that `node` is alive; its connections stay online for one TTL after the last heartbeat.
    func heartbeat(node: NodeID) async throws

    /// The nodes that registered connections and whose heartbeat expired (they died, or lost the store for longer
    /// than the TTL), each claimed for `claimer` for `lease`: a claimed node is not returned to anyone again until
    /// the lease ends or ``forgetExpiredNode(_:)`` is called, so two nodes never clean up after the same one.
    func claimExpiredNodes(for claimer: NodeID, lease: Duration) async throws -> [NodeID]

    /// Removes the connections `node` registered in an earlier life: all of them when its heartbeat expired, and
    /// those of a previous process when it runs again under the same id. Returns the users who, as a result, have
    /// no live connection anywhere (announce them offline).
    func removeStaleConnections(of node: NodeID) async throws -> [UserID]

    /// Forgets `node` once everything it left behind was cleaned up, and ends its claim; a node that heartbeats
    /// again meanwhile is kept.
    func forgetExpiredNode(_ node: NodeID) async throws
}
