import Foundation
import Logging

/// Several nodes: messages for recipients connected to another node go to that node's inbox (``NodeRelay``), and
/// what other nodes forward here is delivered to this node's connections.
extension ChatService {
    /// Forwards `batch` (entries of `recipient`, in order) to each of `nodes`; returns the entries no node took,
    /// for the offline queue. A node whose inbox is gone, or a relay that cannot be reached, takes none.
    func forward(_ batch: [QueueEntry], to nodes: Set<NodeID>, for recipient: UserID, via relay: any NodeRelay) async -> [QueueEntry] {
        var taken = Set<Int>()
        for node in nodes.sorted() {
            do {
                let refused = try await relay.forward(batch, to: node)
                self.relaySucceeded()
                let accepted = Set(batch.indices).subtracting(refused)
                taken.formUnion(accepted)
                self.statistics.forwarded += accepted.count
                if !accepted.isEmpty {
                    self.logger.info(
                        "Message forwarded to the recipient's node",
                        metadata: [
                            "chat.user.id": "\(recipient)", "chat.node.id": "\(node)", "chat.message.count": "\(accepted.count)",
                            "chat.message.id": "\(batch.last?.message.id.hexString ?? "")",
                        ]
                    )
                }
                if !refused.isEmpty {
                    self.statistics.relayRefused += refused.count
                    self.logger.info(
                        "The recipient's node did not take the messages (no inbox, or a full one)",
                        metadata: ["chat.user.id": "\(recipient)", "chat.node.id": "\(node)", "chat.message.count": "\(refused.count)"]
                    )
                }
            } catch {
                self.relayFailed(error)
            }
        }
        return batch.indices.filter { !taken.contains($0) }.map { batch[$0] }
    }

    /// Reads this node's relay inbox while the engine runs; after a failure, tries again with a capped backoff.
    func readRelayInbox() async {
        guard let relay = self.relay else { return }
        let node = self.configuration.nodeID
        var backoff = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                try await relay.receive(for: node) { entries in await self.receiveRelayed(entries) }
                return  // ended by cancellation
            } catch {
                if Task.isCancelled { return }
                self.relayFailed(error)
                try? await self.clock.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }

    /// Delivers what other nodes sent here: entries as if they had been sent here (live to a recipient who is
    /// live on this node, confirmed by the client, then recorded in `readBy`; else onto the offline path behind
    /// what is already there; never forwarded again), and presence changes to the local connections of the
    /// contacts they name.
    func receiveRelayed(_ messages: [RelayMessage]) async {
        self.relaySucceeded()
        var entries: [QueueEntry] = []
        for message in messages {
            switch message {
            case .entry(let entry):
                entries.append(entry)
            case .presence(let notice):
                let event: OutboundEvent = notice.online ? .userOnline(notice.change) : .userOffline(notice.change)
                for recipient in notice.recipients {
                    for connection in self.lanes[recipient]?.connections ?? [] { try? self.transport.emit(event, to: connection) }
                }
            case .notice(let notice):
                guard let event = notice.event else { continue }
                for recipient in notice.recipients {
                    for connection in self.lanes[recipient]?.connections ?? [] { try? self.transport.emit(event, to: connection) }
                }
            }
        }
        self.statistics.relayedIn += entries.count
        await self.startEnqueueFlushers(for: self.routeHere(entries.map { entry in
            var entry = entry
            entry.relayed = true
            return entry
        }))
    }

    /// Routes entries that came from another node's inbox (forwarded, or moved out of a dead node's) through
    /// their recipients' lanes here: pushed to a live recipient's connections, else onto the offline path. With
    /// `presence`, an entry on the offline path may be forwarded to the node its recipient is on (the flusher
    /// decides); without, it stays here. Returns the recipients whose enqueue flusher must run.
    func routeHere(_ entries: [QueueEntry], presence: [UserID: [PresenceRecord]]? = nil) -> [UserID] {
        var flushers: [UserID] = []
        var prepared: [MessageID: PreparedEvent] = [:]
        for entry in entries {
            switch self.lanes[entry.recipient, default: RecipientLane()].route(entry) {
            case .push(let connections):
                let event = prepared[entry.message.id]
                    ?? self.transport.prepare(.messageReceived(ReceivedMessage(message: entry.message, sender: entry.sender, isNew: true)))
                prepared[entry.message.id] = event
                self.push(event, message: entry.message.id, to: entry.recipient, connections: connections)
            case .enqueue(let startFlusher):
                if let presence { self.lanes[entry.recipient]?.sawRemoteNodes(self.otherNodes(of: entry.recipient, in: presence)) }
                if startFlusher { flushers.append(entry.recipient) }
            }
        }
        return flushers
    }

    /// Tells the other nodes where `peers` are connected that `change` happened (one notice per node, naming the
    /// peers connected there). Best effort, like the local broadcast: a contact who misses it sees the user's
    /// state on their next connect.
    func announce(_ change: PresenceChange, online: Bool, to peers: Set<UserID>) async {
        guard let relay = self.relay else { return }
        for (node, recipients) in await self.otherNodes(of: peers) {
            do {
                try await relay.announce(PresenceNotice(change: change, online: online, recipients: recipients), to: node)
                self.relaySucceeded()
            } catch {
                self.relayFailed(error)
            }
        }
    }

    /// The other nodes where `peers` are connected, each with those of them connected there (sorted); none without
    /// a relay or while presence is unreachable.
    func otherNodes(of peers: Set<UserID>) async -> [(node: NodeID, users: [UserID])] {
        guard self.relay != nil, !peers.isEmpty, let records = await self.lookupPresence(Array(peers)) else { return [] }
        var byNode: [NodeID: Set<UserID>] = [:]
        for (peer, connections) in records {
            for record in connections where record.nodeID != self.configuration.nodeID { byNode[record.nodeID, default: []].insert(peer) }
        }
        return byNode.sorted { $0.key < $1.key }.map { ($0.key, $0.value.sorted()) }
    }

    /// Whether `user` has a live connection on another node (several nodes; false without a relay or presence).
    func isConnectedElsewhere(_ user: UserID) async -> Bool {
        guard self.relay != nil, let records = await self.lookupPresence([user]) else { return false }
        return records[user, default: []].contains { $0.nodeID != self.configuration.nodeID }
    }

    func relayFailed(_ error: any Error) {
        if self.relayOutage.failed() == .wentDown {
            self.logger.warning(
                "Node relay unreachable; recipients on other nodes get their messages from the queue or the store",
                metadata: ["component": "relay", "error": "\(error)"]
            )
        }
    }

    func relaySucceeded() {
        if self.relayOutage.succeeded() == .cameBack {
            self.logger.info("Node relay reachable again; cross-node delivery resumed")
        }
    }
}

/// Copies of live messages for a recipient's connections on other nodes, waiting to be forwarded in order.
struct RemoteCopies: Sendable {
    var entries: [(entry: QueueEntry, nodes: Set<NodeID>)] = []
    var forwarding = false
}

extension ChatService {
    /// Forwards a copy of `entry` to `nodes`, where its recipient is connected too (they got it here already).
    /// Copies of one recipient go out in acceptance order, one flusher per recipient.
    func copy(_ entry: QueueEntry, to nodes: Set<NodeID>) {
        let recipient = entry.recipient
        self.remoteCopies[recipient, default: RemoteCopies()].entries.append((entry, nodes))
        guard self.remoteCopies[recipient]?.forwarding == false else { return }
        self.remoteCopies[recipient]?.forwarding = true
        if !self.submit({ [self] in await self.forwardCopies(of: recipient) }) {
            self.remoteCopies[recipient] = nil
        }
    }

    /// Forwards `recipient`'s waiting copies, batch after batch (each run of entries for the same nodes as one
    /// batch), until none wait. A copy no node takes is dropped: the recipient got the message on this node's
    /// connection, and their other connections catch up on reconnect. (Delivery is recorded once per user, so a
    /// store catch-up cannot tell which device missed it.)
    func forwardCopies(of recipient: UserID) async {
        guard let relay = self.relay else {
            self.remoteCopies[recipient] = nil
            return
        }
        while let waiting = self.remoteCopies[recipient]?.entries, !waiting.isEmpty {
            self.remoteCopies[recipient]?.entries = []
            var start = 0
            while start < waiting.count {
                let nodes = waiting[start].nodes
                var end = start + 1
                while end < waiting.count, waiting[end].nodes == nodes { end += 1 }
                let batch = waiting[start..<end].map(\.entry)
                let missed = await self.forward(batch, to: nodes, for: recipient, via: relay)
                if !missed.isEmpty {
                    self.logger.debug(
                        "Copies for the recipient's other nodes not taken; those connections catch up on reconnect",
                        metadata: ["chat.user.id": "\(recipient)", "chat.message.count": "\(missed.count)"]
                    )
                }
                start = end
            }
        }
        self.remoteCopies[recipient] = nil
    }
}
