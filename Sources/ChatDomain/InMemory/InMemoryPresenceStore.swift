public import Foundation
import Synchronization

/// A ``PresenceStore`` in process memory with the same expiry rule as the Redis one: a connection counts only
/// while its node's last heartbeat (or registration) is younger than the TTL. Processes do not restart inside it,
/// so a node whose heartbeat is alive has no connections of an earlier life to remove.
///
/// ``setAvailable(_:)`` simulates an outage: while unavailable every call throws ``ChatError/Code/unavailable``.
public final class InMemoryPresenceStore: PresenceStore {
    private struct State {
        var available = true
        var records: [UserID: [ConnectionID: PresenceRecord]] = [:]
        var heartbeats: [NodeID: Date] = [:]
        /// Nodes that registered connections, until forgotten after their cleanup.
        var nodes: Set<NodeID> = []
        /// Who cleans up after an expired node, and until when.
        var claims: [NodeID: (claimer: NodeID, until: Date)] = [:]
        var lookups = 0
    }

    private let ttl: TimeInterval
    private let clock: any WallClock
    private let state = Mutex(State())

    /// Creates an empty store whose nodes expire `ttl` seconds after their last heartbeat.
    public init(ttl: TimeInterval = 30, clock: any WallClock = SystemWallClock()) {
        self.ttl = ttl
        self.clock = clock
    }

    /// Turns the simulated outage off (`true`) or on (`false`).
    public func setAvailable(_ available: Bool) {
        self.state.withLock { $0.available = available }
    }

    /// How many ``lookup(_:)`` calls were answered (each is one round trip in a networked store).
    public var lookupCount: Int {
        self.state.withLock { $0.lookups }
    }

    public func register(_ record: PresenceRecord) async throws {
        let now = self.clock.now()
        try self.withAvailableState { state in
            state.records[record.userID, default: [:]][record.connectionID] = record
            state.heartbeats[record.nodeID] = now
            state.nodes.insert(record.nodeID)
        }
    }

    public func unregister(connection: ConnectionID, of user: UserID, node: NodeID) async throws {
        try self.withAvailableState { state in
            state.records[user]?[connection] = nil
            if state.records[user]?.isEmpty == true { state.records[user] = nil }
        }
    }

    public func lookup(_ users: [UserID]) async throws -> [UserID: [PresenceRecord]] {
        let now = self.clock.now()
        return try self.withAvailableState { state in
            state.lookups += 1
            var result: [UserID: [PresenceRecord]] = [:]
            for user in users {
                result[user] = (state.records[user]?.values ?? [:].values)
                    .filter { self.isAlive($0.nodeID, in: state, at: now) }
                    .sorted { $0.connectionID < $1.connectionID }
            }
            return result
        }
    }

    public func heartbeat(node: NodeID) async throws {
        let now = self.clock.now()
        try self.withAvailableState { $0.heartbeats[node] = now }
    }

    public func claimExpiredNodes(for claimer: NodeID, lease: Duration) async throws -> [NodeID] {
        let now = self.clock.now()
        return try self.withAvailableState { state in
            var claimed: [NodeID] = []
            for node in state.nodes.sorted() where node != claimer && !self.isAlive(node, in: state, at: now) {
                if let claim = state.claims[node], claim.until > now { continue }
                state.claims[node] = (claimer, now.addingTimeInterval(TimeInterval(lease.wholeMilliseconds) / 1000))
                claimed.append(node)
            }
            return claimed
        }
    }

    public func removeStaleConnections(of node: NodeID) async throws -> [UserID] {
        let now = self.clock.now()
        return try self.withAvailableState { state in
            guard !self.isAlive(node, in: state, at: now) else { return [] }
            var offline: [UserID] = []
            for (user, connections) in state.records where connections.values.contains(where: { $0.nodeID == node }) {
                let kept = connections.filter { $0.value.nodeID != node }
                state.records[user] = kept.isEmpty ? nil : kept
                if !kept.values.contains(where: { self.isAlive($0.nodeID, in: state, at: now) }) { offline.append(user) }
            }
            return offline.sorted()
        }
    }

    public func forgetExpiredNode(_ node: NodeID) async throws {
        let now = self.clock.now()
        try self.withAvailableState { state in
            state.claims[node] = nil
            if !self.isAlive(node, in: state, at: now) { state.nodes.remove(node) }
        }
    }

    private func isAlive(_ node: NodeID, in state: State, at now: Date) -> Bool {
        guard let beat = state.heartbeats[node] else { return false }
        return now.timeIntervalSince(beat) < self.ttl
    }

    private func withAvailableState<Result>(_ body: (inout State) throws -> Result) throws -> Result {
        try self.state.withLock { state in
            guard state.available else {
                throw ChatError(.unavailable, "the in-memory presence store is switched to a simulated outage")
            }
            return try body(&state)
        }
    }
}
