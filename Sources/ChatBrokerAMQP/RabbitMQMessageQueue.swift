import ChatAdapterSupport
public import ChatDomain
import Foundation
public import Logging
import Synchronization
public import ServiceLifecycle

/// A ``ChatDomain/MessageQueue`` on RabbitMQ, through rabbitmq-c.
///
/// Topology (declared at start and after every reconnect): the direct exchange `offline_messages_exchange`; one
/// durable queue per recipient, `offline_messages.<userId>`, bound by the user id, with `x-message-ttl`,
/// `x-max-length`, `x-overflow: reject-publish` (a full queue refuses the publish, so the engine knows) and
/// `x-dead-letter-exchange: offline_messages_dlx`, never `x-expires`; the fanout `offline_messages_dlx` into the
/// durable `offline_messages_dead`; and `message_delivery` (7 days, 50,000 entries) for delivery events.
///
/// Publishes are persistent and `mandatory`, and ``enqueue(_:for:)`` returns only once the broker confirmed each
/// one; publishes of concurrent calls share a window of up to 1,000 unconfirmed messages instead of waiting for
/// each other's confirms. Consumers read with `basic.consume` and a prefetch window, on connections of their own
/// kept between drains; closing a consumer returns what it did not acknowledge. rabbitmq-c blocks, so every call
/// runs on a thread of this queue's own. While the broker
/// is unreachable calls fail fast with ``ChatDomain/ChatError`` code `unavailable`; the connection comes back by
/// itself (with capped backoff) and declares the topology again.
///
/// Run it as a `Service`: ``run()`` also reads the dead-letter queue into ``deadLetters()``.
public final class RabbitMQMessageQueue: MessageQueue, Service {
    /// The settings the queue was created with.
    public let configuration: AMQPQueueConfiguration
    private let connection: AMQPConnection
    private let threads: BlockingThreads
    let logger: Logger
    private let deadLetterStream: AsyncStream<DeadLetter>
    private let deadLetterContinuation: AsyncStream<DeadLetter>.Continuation
    /// Open consumers, closed with the queue.
    private let consumers = Mutex<[ObjectIdentifier: AMQPStreamConsumer]>([:])
    /// Publishes waiting for the connection's thread.
    private let inbox = PublishInbox()
    /// Consumer connections between two drains.
    private let consumerPool: ConsumerPool

    /// Creates the queue; it connects on first use.
    public init(configuration: AMQPQueueConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.connection = AMQPConnection(configuration: configuration, logger: logger)
        // Up to 8 connections wait between drains, none longer than a third of the heartbeat (10 s by default).
        let heartbeat = configuration.heartbeat > .zero ? configuration.heartbeat : .seconds(30)
        self.consumerPool = ConsumerPool(capacity: 8, maxIdle: min(heartbeat / 3, .seconds(10)))
        // One thread: the rabbitmq-c connection is confined to it.
        self.threads = BlockingThreads(role: "offline queue")
        (self.deadLetterStream, self.deadLetterContinuation) = AsyncStream.makeStream()
    }

    public func enqueue(_ entries: [QueueEntry], for user: UserID) async throws -> [MessageID] {
        guard !entries.isEmpty else { return [] }
        let encoder = JSONEncoder()
        let bodies = try entries.map { (id: $0.message.id.hexString, body: Array(try encoder.encode($0))) }
        let refused = try await self.publish(bodies, exchange: Topology.exchange, routingKey: user.rawValue, declaresUserQueue: true)
        let now = Date()
        for index in refused.sorted() {
            self.deadLetterContinuation.yield(DeadLetter(entry: entries[index], reason: .rejected, at: now))
        }
        return refused.sorted().map { entries[$0].message.id }
    }

    /// A `basic.consume` consumer with `prefetch` as its `basic.qos` window, on a connection of its own (one kept
    /// from an earlier drain when one waits).
    public func consumer(for user: UserID, prefetch: Int) async throws -> any QueueConsumer {
        try await self.perform { try $0.ensureQueue(of: user.rawValue) }
        return try await self.openConsumer(queue: Topology.queue(of: user.rawValue), prefetch: prefetch)
    }

    /// A consumer of `queue` (declared already), closed with this queue if still open then.
    func openConsumer(queue: String, prefetch: Int) async throws -> AMQPStreamConsumer {
        let consumer = try await AMQPStreamConsumer.open(
            self.configuration,
            queue: queue,
            prefetch: max(prefetch, 1),
            pool: self.consumerPool,
            onClose: { [weak self] id in self?.forget(consumer: id) }
        )
        self.consumers.withLock { $0[ObjectIdentifier(consumer)] = consumer }
        return consumer
    }

    public func depth(for user: UserID) async throws -> QueueDepth {
        let depth = try await self.perform { try $0.depth(of: Topology.queue(of: user.rawValue)) }
        // A passive declare counts ready messages only; unacknowledged ones are not visible this way.
        return QueueDepth(ready: depth.messages, unacknowledged: 0, consumers: depth.consumers)
    }

    /// Ready entries in the dead-letter queue, for monitoring.
    public func deadLetterDepth() async throws -> Int {
        try await self.perform { try $0.depth(of: Topology.deadLetterQueue).messages }
    }

    public func deadLetters() -> AsyncStream<DeadLetter> {
        self.deadLetterStream
    }

    /// Publishes the events to `message_delivery` (7 days, at most 50,000: the oldest give way), confirmed.
    public func publishDeliveryEvents(_ events: [DeliveryEvent]) async throws {
        guard !events.isEmpty else { return }
        let encoder = JSONEncoder()
        let bodies = try events.map { (id: "\($0.messageID):\($0.userID):\($0.status)", body: Array(try encoder.encode($0))) }
        _ = try await self.publish(bodies, exchange: "", routingKey: Topology.deliveryQueue, declaresUserQueue: false)
    }

    /// Ready events in `message_delivery`, for monitoring.
    public func deliveryEventDepth() async throws -> Int {
        try await self.perform { try $0.depth(of: Topology.deliveryQueue).messages }
    }

    /// Reads the dead-letter queue until graceful shutdown (or cancellation), then closes the connection and
    /// stops the queue's thread.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.readDeadLetters()
                try? await Task.sleep(for: self.configuration.deadLetterPollInterval)
            }
        }
        await self.close()
    }

    /// Closes the connection and stops the queue's thread; later calls fail with `unavailable`.
    public func close() async {
        let open = self.consumers.withLock { consumers in
            defer { consumers = [:] }
            return Array(consumers.values)
        }
        for consumer in open { await consumer.close() }
        await self.consumerPool.close()
        await self.threads.runIfRunning { [connection] in connection.close() }
        await self.threads.shutDown()
        self.deadLetterContinuation.finish()
    }

    /// Moves what the broker dead-lettered into ``deadLetters()``; each is acknowledged once handed over.
    func readDeadLetters() async {
        let decoder = JSONDecoder()
        while let got = try? await self.perform({ try $0.get(Topology.deadLetterQueue) }) {
            let generation = try? await self.perform { $0.generation }
            if let entry = try? decoder.decode(QueueEntry.self, from: Data(got.body)) {
                let reason: DeadLetter.Reason = got.deathReason == "expired" ? .expired : .failed
                self.deadLetterContinuation.yield(DeadLetter(entry: entry, reason: reason, at: Date()))
            } else {
                self.logger.warning("Dead-lettered message is not a queue entry; dropped", metadata: ["amqp.queue": "\(Topology.deadLetterQueue)"])
            }
            if let generation { _ = try? await self.perform({ try $0.ack(got.tag, generation: generation) }) }
        }
    }

    private func forget(consumer id: ObjectIdentifier) {
        self.consumers.withLock { _ = $0.removeValue(forKey: id) }
    }

    /// Hands `bodies` to the connection's publishing pump and returns once the broker confirmed each: the indexes
    /// it refused (a full queue; with `returnsAreRefusals`, also those it returned as unroutable).
    func publish(
        _ bodies: [(id: String, body: [UInt8])],
        exchange: String,
        routingKey: String,
        declaresUserQueue: Bool = false,
        returnsAreRefusals: Bool = false
    ) async throws(ChatError) -> Set<Int> {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Set<Int>, AMQPQueueError>, Never>) in
            var request = PublishRequest(
                exchange: exchange,
                routingKey: routingKey,
                declaresUserQueue: declaresUserQueue,
                bodies: bodies,
                complete: { continuation.resume(returning: $0) }
            )
            request.returnsAreRefusals = returnsAreRefusals
            if self.inbox.add(request) { self.schedulePump() }
        }
        return try result.mapError(\.chatError).get()
    }

    /// Runs the connection's publishing pump on its thread (after the calls already waiting there).
    private func schedulePump() {
        let closed = AMQPQueueError(code: .connectionLost, message: "the offline queue is closed")
        self.threads.submit(
            { [connection, inbox] in connection.pump(inbox, reschedule: { [weak self] in self?.schedulePump() }) },
            cancelled: { [inbox] in inbox.failAll(closed) }
        )
    }

    func perform<Result: Sendable>(_ body: @escaping @Sendable (AMQPConnection) throws -> Result) async throws(ChatError) -> Result {
        try await self.threads.run { [connection] in try body(connection) }
    }
}
