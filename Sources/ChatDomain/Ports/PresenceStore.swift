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
}
