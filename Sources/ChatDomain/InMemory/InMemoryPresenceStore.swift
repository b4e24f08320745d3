public import Foundation
import Synchronization

/// A ``PresenceStore`` in process memory with the same expiry rule as the Redis one: a connection counts only
/// while its node's last heartbeat (or registration) is younger than the TTL.
///
/// ``setAvailable(_:)`` simulates an outage: while unavailable every call throws ``ChatError/Code/unavailable``.
public final class InMemoryPresenceStore: PresenceStore {
    private struct State {
        var available = true
        var records: [UserID: [ConnectionID: PresenceRecord]] = [:]
        var heartbeats: [NodeID: Date] = [:]
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
                    .filter { record in
                        guard let beat = state.heartbeats[record.nodeID] else { return false }
                        return now.timeIntervalSince(beat) < self.ttl
                    }
                    .sorted { $0.connectionID < $1.connectionID }
            }
            return result
        }
    }

    public func heartbeat(node: NodeID) async throws {
        let now = self.clock.now()
        try self.withAvailableState { $0.heartbeats[node] = now }
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
