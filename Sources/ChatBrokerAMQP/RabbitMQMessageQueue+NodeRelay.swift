public import ChatDomain
import Foundation

/// Several nodes on one broker: each node's inbox is the durable queue `chatd.node.<nodeId>`, bound to the direct
/// exchange `chatd.route` by the node id. A forward is a persistent, `mandatory`, confirmed publish per entry, so a
/// node whose inbox does not exist answers with a return (reported as refused) and a full inbox with a nack.
/// Entries travel as queue entries' JSON; a presence notice as `{"presence": {...}}`, a read mark or typing
/// notice as `{"notice": {...}}`.
extension RabbitMQMessageQueue: NodeRelay {
    /// A presence notice as it travels in an inbox, told apart from a queue entry by its one key.
    private struct PresenceEnvelope: Codable {
        var presence: PresenceNotice
    }

    /// A read mark or typing notice as it travels in an inbox.
    private struct NoticeEnvelope: Codable {
        var notice: ChatNotice
    }

    /// Publishes `entries` to `node`'s inbox and returns once the broker confirmed each: the indexes it refused
    /// (no such inbox, or a full one).
    public func forward(_ entries: [QueueEntry], to node: NodeID) async throws -> Set<Int> {
        guard !entries.isEmpty else { return [] }
        let encoder = JSONEncoder()
        let bodies = try entries.map { (id: $0.message.id.hexString, body: Array(try encoder.encode($0))) }
        return try await self.publish(bodies, exchange: Topology.routeExchange, routingKey: node.rawValue, returnsAreRefusals: true)
    }

    /// `node`'s inbox: ready entries (a passive declare, so unacknowledged ones are not counted) and consumers;
    /// nil when the node has no inbox (it never read one, or it died and its inbox was taken over).
    /// - Throws: ``ChatDomain/ChatError`` when the broker cannot be reached.
    public func inboxDepth(of node: NodeID) async throws -> QueueDepth? {
        let depth = try await self.perform { try $0.depthIfExists(of: Topology.nodeQueue(of: node.rawValue)) }
        return depth.map { QueueDepth(ready: $0.messages, unacknowledged: 0, consumers: $0.consumers) }
    }

    /// Publishes `notice` to `node`'s inbox (confirmed); a node without an inbox is skipped.
    public func announce(_ notice: PresenceNotice, to node: NodeID) async throws {
        let body = Array(try JSONEncoder().encode(PresenceEnvelope(presence: notice)))
        let id = "presence:\(notice.change.userID):\(notice.online ? "online" : "offline")"
        _ = try await self.publish([(id: id, body: body)], exchange: Topology.routeExchange, routingKey: node.rawValue, returnsAreRefusals: true)
    }

    /// Publishes `notice` to `node`'s inbox (confirmed); a node without an inbox is skipped.
    public func notify(_ notice: ChatNotice, to node: NodeID) async throws {
        let body = Array(try JSONEncoder().encode(NoticeEnvelope(notice: notice)))
        let id = notice.read.map { "read:\($0.chatID):\($0.userID)" } ?? notice.typing.map { "typing:\($0.chatID):\($0.userID)" } ?? "notice"
        _ = try await self.publish([(id: id, body: body)], exchange: Topology.routeExchange, routingKey: node.rawValue, returnsAreRefusals: true)
    }

    /// Declares `node`'s inbox and consumes it until the task is cancelled, on a consumer connection of its own:
    /// each batch (at most 256) goes to `deliver`, and is acknowledged once `deliver` returned. A body that is not
    /// a queue entry nor a presence notice is acknowledged and dropped with a log line (it would block the inbox
    /// otherwise).
    public func receive(for node: NodeID, deliver: @escaping @Sendable ([RelayMessage]) async -> Void) async throws {
        let queue = Topology.nodeQueue(of: node.rawValue)
        try await self.perform { try $0.ensureNodeQueue(of: node.rawValue) }
        let consumer = try await self.openConsumer(queue: queue, prefetch: 256)
        self.logger.info("Reading this node's inbox", metadata: ["amqp.queue": "\(queue)"])
        do {
            while !Task.isCancelled {
                let deliveries = try await consumer.waitForDeliveries(timeout: .seconds(1))
                guard !deliveries.isEmpty else { continue }
                let messages = self.decodeRelayMessages(deliveries.map(\.body), from: queue)
                if !messages.isEmpty { await deliver(messages) }
                try await consumer.ack(deliveries.map(\.tag))
            }
        } catch {
            await consumer.close()
            if Task.isCancelled { return }
            throw error
        }
        await consumer.close()
    }

    /// Moves the inbox of a dead `node` on: unless a consumer still reads it, consumes what it holds (each batch
    /// acknowledged once `deliver` returned), then deletes it if it is still idle and empty.
    public func takeOver(inboxOf node: NodeID, deliver: @escaping @Sendable ([RelayMessage]) async -> Void) async throws -> InboxTakeover {
        let queue = Topology.nodeQueue(of: node.rawValue)
        let depth = try await self.perform { try $0.depth(of: queue) }
        guard depth.consumers == 0 else { return InboxTakeover(moved: 0, removed: false) }
        var moved = 0
        if depth.messages > 0 {
            let consumer = try await self.openConsumer(queue: queue, prefetch: 256)
            do {
                // The broker pushes up to the prefetch at once; a quiet half second means the inbox is empty.
                while true {
                    let deliveries = try await consumer.waitForDeliveries(timeout: .milliseconds(500))
                    guard !deliveries.isEmpty else { break }
                    let messages = self.decodeRelayMessages(deliveries.map(\.body), from: queue)
                    if !messages.isEmpty { await deliver(messages) }
                    try await consumer.ack(deliveries.map(\.tag))
                    moved += deliveries.count
                }
            } catch {
                await consumer.close()
                throw error
            }
            await consumer.close()
        }
        guard let dropped = try await self.perform({ try $0.deleteIfIdle(queue) }) else {
            return InboxTakeover(moved: moved, removed: false)
        }
        self.logger.info("Dead node's inbox deleted", metadata: ["amqp.queue": "\(queue)", "chat.message.count": "\(moved)"])
        if dropped > 0 {
            self.logger.warning(
                "Messages reached the dead node's inbox as it was deleted; they stay pending in the store and reach their recipients on their next reconnect",
                metadata: ["amqp.queue": "\(queue)", "chat.message.count": "\(dropped)"]
            )
        }
        return InboxTakeover(moved: moved, removed: true)
    }

    /// Decodes inbox bodies; one that is neither a queue entry nor a presence notice is dropped with a log line
    /// (it would block the inbox otherwise).
    private func decodeRelayMessages(_ bodies: [[UInt8]], from queue: String) -> [RelayMessage] {
        let decoder = JSONDecoder()
        var messages: [RelayMessage] = []
        for body in bodies {
            let data = Data(body)
            if let entry = try? decoder.decode(QueueEntry.self, from: data) {
                messages.append(.entry(entry))
            } else if let envelope = try? decoder.decode(PresenceEnvelope.self, from: data) {
                messages.append(.presence(envelope.presence))
            } else if let envelope = try? decoder.decode(NoticeEnvelope.self, from: data) {
                messages.append(.notice(envelope.notice))
            } else {
                self.logger.warning("Node inbox message is neither a queue entry nor a presence or chat notice; dropped", metadata: ["amqp.queue": "\(queue)"])
            }
        }
        return messages
    }
}
