public import ChatDomain
import Foundation

/// Several nodes on one broker: each node's inbox is the durable queue `chatd.node.<nodeId>`, bound to the direct
/// exchange `chatd.route` by the node id. A forward is a persistent, `mandatory`, confirmed publish per entry, so a
/// node whose inbox does not exist answers with a return (reported as refused) and a full inbox with a nack.
extension RabbitMQMessageQueue: NodeRelay {
    /// Publishes `entries` to `node`'s inbox and returns once the broker confirmed each: the indexes it refused
    /// (no such inbox, or a full one).
    public func forward(_ entries: [QueueEntry], to node: NodeID) async throws -> Set<Int> {
        guard !entries.isEmpty else { return [] }
        let encoder = JSONEncoder()
        let bodies = try entries.map { (id: $0.message.id.hexString, body: Array(try encoder.encode($0))) }
        return try await self.publish(bodies, exchange: Topology.routeExchange, routingKey: node.rawValue, returnsAreRefusals: true)
    }

    /// Declares `node`'s inbox and consumes it until the task is cancelled, on a consumer connection of its own:
    /// each batch (at most 256) goes to `deliver`, and is acknowledged once `deliver` returned. A body that is not
    /// a queue entry is acknowledged and dropped with a log line (it would block the inbox otherwise).
    public func receive(for node: NodeID, deliver: @escaping @Sendable ([QueueEntry]) async -> Void) async throws {
        try await self.perform { try $0.ensureNodeQueue(of: node.rawValue) }
        let consumer = try await self.openConsumer(queue: Topology.nodeQueue(of: node.rawValue), prefetch: 256)
        self.logger.info("Reading this node's inbox", metadata: ["amqp.queue": "\(Topology.nodeQueue(of: node.rawValue))"])
        do {
            let decoder = JSONDecoder()
            while !Task.isCancelled {
                let deliveries = try await consumer.waitForDeliveries(timeout: .seconds(1))
                guard !deliveries.isEmpty else { continue }
                var entries: [QueueEntry] = []
                for delivery in deliveries {
                    if let entry = try? decoder.decode(QueueEntry.self, from: Data(delivery.body)) {
                        entries.append(entry)
                    } else {
                        self.logger.warning("Node inbox message is not a queue entry; dropped", metadata: ["amqp.queue": "\(Topology.nodeQueue(of: node.rawValue))"])
                    }
                }
                if !entries.isEmpty { await deliver(entries) }
                try await consumer.ack(deliveries.map(\.tag))
            }
        } catch {
            await consumer.close()
            if Task.isCancelled { return }
            throw error
        }
        await consumer.close()
    }
}
