import Foundation
import Logging

/// Several nodes: what a dead node leaves behind is cleaned up by a live one. Its inbox is moved on (each entry
/// routed as if it had just been sent: to the recipient's node now, or their offline queue) and deleted, and its
/// users who have no other connection are announced offline. A node that restarts under its own id does the same
/// for the connections of its previous life.
extension ChatService {
    /// Runs while the engine runs, with a relay: first this node's previous life, then every
    /// ``ChatServiceConfiguration/janitorInterval`` the nodes whose heartbeat expired.
    func janitorLoop() async {
        guard self.relay != nil else { return }
        await self.announceOffline(self.removeStaleConnections(of: self.configuration.nodeID))
        while !Task.isCancelled {
            try? await self.clock.sleep(for: self.configuration.janitorInterval)
            if Task.isCancelled { return }
            await self.cleanUpExpiredNodes()
        }
    }

    /// Claims the nodes whose heartbeat expired and cleans up after each; what fails is left for the next round
    /// (the claim lapses, and the store holds every message pending anyway).
    func cleanUpExpiredNodes() async {
        guard let relay = self.relay else { return }
        let expired: [NodeID]
        do {
            expired = try await self.presence.claimExpiredNodes(for: self.configuration.nodeID, lease: self.configuration.janitorLease)
            self.presenceSucceeded()
        } catch {
            self.presenceFailed(error)
            return
        }
        for node in expired {
            await self.cleanUp(after: node, via: relay)
        }
    }

    private func cleanUp(after node: NodeID, via relay: any NodeRelay) async {
        self.logger.warning(
            "Node stopped heartbeating; moving its inbox on and announcing its users offline",
            metadata: ["chat.node.id": "\(node)"]
        )
        let takeover: InboxTakeover
        do {
            takeover = try await relay.takeOver(inboxOf: node) { messages in await self.adopt(messages) }
            self.relaySucceeded()
        } catch {
            self.relayFailed(error)
            return
        }
        let offline = await self.removeStaleConnections(of: node)
        await self.announceOffline(offline)
        guard takeover.removed else {
            self.logger.info(
                "The dead node's inbox is still read or still receiving; left for the next round",
                metadata: ["chat.node.id": "\(node)", "chat.message.count": "\(takeover.moved)"]
            )
            return
        }
        do {
            try await self.presence.forgetExpiredNode(node)
            self.presenceSucceeded()
        } catch {
            self.presenceFailed(error)
            return
        }
        self.statistics.nodesCleanedUp += 1
        self.logger.info(
            "Cleaned up after a dead node",
            metadata: ["chat.node.id": "\(node)", "chat.message.count": "\(takeover.moved)", "chat.user.count": "\(offline.count)"]
        )
    }

    /// Routes entries taken from a dead node's inbox as a send routes them (live here, forwarded to the node the
    /// recipient is on now, or queued), and returns once the forwards and queue writes are confirmed, so the
    /// inbox entry is removed only after its message is safe elsewhere. Presence notices in it are stale: dropped.
    func adopt(_ messages: [RelayMessage]) async {
        let entries = messages.compactMap { message -> QueueEntry? in
            if case .entry(var entry) = message {
                // It may travel again: the node it was sent to is gone.
                entry.relayed = false
                return entry
            }
            return nil
        }
        guard !entries.isEmpty else { return }
        let recipients = Array(Set(entries.map(\.recipient)))
        // Unknown presence (Redis down): treated as offline everywhere, the product's rule.
        let presence = await self.lookupPresence(recipients) ?? [:]
        await self.startEnqueueFlushers(for: self.routeHere(entries, presence: presence))
        for recipient in recipients {
            await self.waitUntilEnqueueIdle(recipient)
        }
        self.statistics.janitorMoved += entries.count
    }

    private func removeStaleConnections(of node: NodeID) async -> [UserID] {
        do {
            let offline = try await self.presence.removeStaleConnections(of: node)
            self.presenceSucceeded()
            return offline
        } catch {
            self.presenceFailed(error)
            return []
        }
    }

    private func announceOffline(_ users: [UserID]) async {
        let now = self.wallClock.now()
        for user in users where self.lanes[user]?.connections.isEmpty ?? true {
            await self.broadcast(.userOffline(PresenceChange(userID: user, timestamp: now)), about: user)
        }
    }
}
