import CRabbitMQ
import ChatAdapterSupport
import ChatDomain
import DequeModule
import Foundation
import Synchronization

/// Reads one user's queue with `basic.consume` and a prefetch window (`basic.qos`), on a connection and thread of
/// its own, so deliveries never mix with the publishing connection's frames.
///
/// "Empty right now" is not something a push consumer is told, so ``next()`` asks: when nothing has arrived it
/// reads the queue's ready count (a passive declare, which the broker answers after any delivery already sent),
/// and returns nil when that is zero. Closing the consumer returns every unacknowledged delivery to the queue:
/// it cancels the consumer and nacks them all (requeued), and the connection and its thread wait in a
/// ``ConsumerPool`` for the next drain; when that fails, it closes the connection, which returns them too.
final class AMQPStreamConsumer: QueueConsumer {
    private let threads: BlockingThreads
    private let state: State
    private let pool: ConsumerPool
    private let onClose: @Sendable (ObjectIdentifier) -> Void
    /// Deliveries fetched with an earlier one and not handed out yet, oldest first.
    private let received = Mutex(Deque<(body: [UInt8], tag: UInt64, redelivered: Bool)>())

    /// The connection and its reads, confined to its consumer's single thread (hence `@unchecked Sendable`).
    final class State: @unchecked Sendable {
        static let channel: amqp_channel_t = 1
        private(set) var queue = ""
        let waitForWindow: Duration
        var connection: amqp_connection_state_t?
        var prefetch = 1
        /// The tag of the current `basic.consume`; a new one for each consumer on this connection.
        private var consumerTag = ""
        private var consumers = 0
        /// Delivery tags received and not yet settled, oldest first.
        var unacknowledged: [UInt64] = []
        /// Ready messages the last count saw that have not arrived yet: while some are due and the window has
        /// room, waiting for them is cheaper than asking the broker again.
        var due = 0

        init(waitForWindow: Duration) {
            self.waitForWindow = waitForWindow
        }

        /// Connects, logs in and opens the channel.
        func connect(_ configuration: AMQPQueueConfiguration) throws(AMQPQueueError) {
            let connection = try AMQPConnection.open(configuration)
            self.connection = connection
            _ = amqp_channel_open(connection, Self.channel)
            try self.check(amqp_get_rpc_reply(connection))
        }

        /// Starts consuming `queue` with at most `prefetch` unacknowledged deliveries.
        func consume(_ queue: String, prefetch: Int) throws(AMQPQueueError) {
            guard let connection = self.connection else { throw Self.closed }
            self.queue = queue
            self.prefetch = max(1, min(prefetch, Int(UInt16.max)))
            self.consumers += 1
            self.consumerTag = "chatd-drain-\(self.consumers)"
            try self.check(chatd_amqp_consume(connection, Self.channel, queue, UInt16(self.prefetch), self.consumerTag))
        }

        /// Ends the current consumer and returns what it did not acknowledge to the queue; true when the
        /// connection can serve another consumer (else it is closed, which returns them too).
        func release() -> Bool {
            guard let connection = self.connection else { return false }
            guard chatd_amqp_release_consumer(connection, Self.channel, self.consumerTag) == 0 else {
                self.close()
                return false
            }
            self.unacknowledged = []
            self.due = 0
            return true
        }

        func next() throws(AMQPQueueError) -> (body: [UInt8], tag: UInt64, redelivered: Bool)? {
            guard let connection = self.connection else { throw Self.closed }
            if let delivery = try self.poll(connection, timeout: 0) { return delivery }
            if self.due > 0, self.unacknowledged.count < self.prefetch,
                let delivery = try self.poll(connection, timeout: self.waitForWindow.wholeMilliseconds)
            {
                return delivery
            }
            var reply = amqp_rpc_reply_t()
            let ready = chatd_amqp_ready_count(connection, Self.channel, self.queue, &reply)
            if ready < 0 { try self.check(reply) }
            self.due = Int(max(ready, 0))
            // Deliveries sent before the declare's answer arrived with it.
            if let delivery = try self.poll(connection, timeout: 0) { return delivery }
            guard ready > 0 else { return nil }
            // Ready but not pushed yet: the broker sends them as the prefetch window allows.
            return try self.poll(connection, timeout: self.waitForWindow.wholeMilliseconds)
        }

        /// The next delivery as ``next()`` finds it, and with it every delivery already received (at most the
        /// prefetch window): one hop to this thread per window, not per message.
        func nextBatch() throws(AMQPQueueError) -> [(body: [UInt8], tag: UInt64, redelivered: Bool)] {
            guard let first = try self.next(), let connection = self.connection else { return [] }
            var batch = [first]
            while batch.count < self.prefetch, let delivery = try self.poll(connection, timeout: 0) {
                batch.append(delivery)
            }
            return batch
        }

        /// The deliveries that arrive within `timeout` (waiting for the first, then taking every one already
        /// received, at most the prefetch window); none when nothing came. For a consumer that waits for work
        /// rather than drains a backlog: it never asks for the queue's ready count.
        func waitBatch(timeout: Duration) throws(AMQPQueueError) -> [(body: [UInt8], tag: UInt64, redelivered: Bool)] {
            guard let connection = self.connection else { throw Self.closed }
            guard let first = try self.poll(connection, timeout: timeout.wholeMilliseconds) else { return [] }
            var batch = [first]
            while batch.count < self.prefetch, let delivery = try self.poll(connection, timeout: 0) {
                batch.append(delivery)
            }
            return batch
        }

        func settle(_ tag: UInt64, requeue: Bool?) throws(AMQPQueueError) {
            guard let connection = self.connection else { throw Self.closed }
            let status: Int32 =
                if let requeue { amqp_basic_nack(connection, Self.channel, tag, 0, requeue ? 1 : 0) } else {
                    amqp_basic_ack(connection, Self.channel, tag, 0)
                }
            try self.check(status)
            self.unacknowledged.removeAll { $0 == tag }
            // Requeued, it comes back to this consumer: wait for it rather than ask for the queue's ready count,
            // which does not count a message already on its way back (a drain that read on would stop short).
            if requeue == true { self.due += 1 }
        }

        /// Acknowledges `tags`; when they are the oldest unacknowledged ones, with one `multiple` acknowledgement.
        func ack(_ tags: [UInt64]) throws(AMQPQueueError) {
            guard let connection = self.connection else { throw Self.closed }
            guard let last = tags.last else { return }
            if Array(self.unacknowledged.prefix(tags.count)) == tags {
                try self.check(amqp_basic_ack(connection, Self.channel, last, 1))
                self.unacknowledged.removeFirst(tags.count)
            } else {
                for tag in tags { try self.settle(tag, requeue: nil) }
            }
        }

        private func check(_ status: Int32) throws(AMQPQueueError) {
            guard status == AMQP_STATUS_OK.rawValue else {
                self.close()
                throw AMQPQueueError(code: .connectionLost, message: "consumer connection lost: \(String(cString: chatd_amqp_status_text(status)))")
            }
        }

        func close() {
            guard let connection = self.connection else { return }
            self.connection = nil
            _ = amqp_connection_close(connection, AMQP_REPLY_SUCCESS)
            _ = amqp_destroy_connection(connection)
        }

        private func poll(_ connection: amqp_connection_state_t, timeout: Int) throws(AMQPQueueError) -> (body: [UInt8], tag: UInt64, redelivered: Bool)? {
            var got = chatd_amqp_got_t()
            var text = [CChar](repeating: 0, count: 512)
            switch chatd_amqp_next_delivery(connection, timeout, &got, &text, text.count) {
            case 1:
                defer { free(got.body) }
                self.unacknowledged.append(got.delivery_tag)
                self.due = max(0, self.due - 1)
                return ([UInt8](UnsafeRawBufferPointer(start: got.body, count: got.length)), got.delivery_tag, got.redelivered != 0)
            case 0:
                return nil
            default:
                self.close()
                throw AMQPQueueError(code: .connectionLost, message: "consumer of \(self.queue) failed: \(AMQPConnection.string(text))")
            }
        }

        private func check(_ reply: amqp_rpc_reply_t) throws(AMQPQueueError) {
            guard reply.reply_type != AMQP_RESPONSE_NORMAL else { return }
            var text = [CChar](repeating: 0, count: 512)
            _ = chatd_amqp_describe(reply, &text, text.count)
            self.close()
            throw AMQPQueueError(code: .connectionLost, message: "consumer of \(self.queue) failed: \(AMQPConnection.string(text))")
        }

        private static let closed = AMQPQueueError(code: .staleConsumer, message: "this consumer is closed; open a new one")
    }

    private init(threads: BlockingThreads, state: State, pool: ConsumerPool, onClose: @escaping @Sendable (ObjectIdentifier) -> Void) {
        self.threads = threads
        self.state = state
        self.pool = pool
        self.onClose = onClose
    }

    /// Starts consuming `queue` with at most `prefetch` unacknowledged deliveries, on a connection from `pool`
    /// (or a new one when none waits there or the one taken turned out broken).
    static func open(
        _ configuration: AMQPQueueConfiguration,
        queue: String,
        prefetch: Int,
        pool: ConsumerPool,
        onClose: @escaping @Sendable (ObjectIdentifier) -> Void
    ) async throws -> AMQPStreamConsumer {
        while let idle = await pool.take() {
            do {
                try await idle.threads.run { try idle.state.consume(queue, prefetch: prefetch) }
                return AMQPStreamConsumer(threads: idle.threads, state: idle.state, pool: pool, onClose: onClose)
            } catch {
                // Idle too long, or the broker restarted: the state closed its connection; try the next.
                await idle.threads.shutDown()
            }
        }
        let threads = BlockingThreads(role: "offline queue consumer")
        let state = State(waitForWindow: .seconds(2))
        do {
            try await threads.run {
                try state.connect(configuration)
                try state.consume(queue, prefetch: prefetch)
            }
        } catch {
            await threads.runIfRunning { state.close() }
            await threads.shutDown()
            throw error
        }
        return AMQPStreamConsumer(threads: threads, state: state, pool: pool, onClose: onClose)
    }

    func next() async throws -> QueueDelivery? {
        var got = self.received.withLock { $0.popFirst() }
        if got == nil {
            var batch = Deque(try await self.threads.run({ [state] in try state.nextBatch() }))
            got = batch.popFirst()
            self.received.withLock { $0.append(contentsOf: batch) }
        }
        guard let got else { return nil }
        let entry = try JSONDecoder().decode(QueueEntry.self, from: Data(got.body))
        return QueueDelivery(entry: entry, tag: DeliveryTag(got.tag), redelivered: got.redelivered)
    }

    func ack(_ tag: DeliveryTag) async throws {
        try await self.threads.run { [state] in try state.settle(tag.rawValue, requeue: nil) }
    }

    /// The deliveries that arrive within `timeout`, raw: for a consumer that waits for work (a node's inbox).
    func waitForDeliveries(timeout: Duration) async throws -> [(body: [UInt8], tag: DeliveryTag)] {
        try await self.threads.run { [state] in try state.waitBatch(timeout: timeout) }.map { ($0.body, DeliveryTag($0.tag)) }
    }

    func ack(_ tags: [DeliveryTag]) async throws {
        try await self.threads.run { [state] in try state.ack(tags.map(\.rawValue)) }
    }

    func nack(_ tag: DeliveryTag) async throws {
        try await self.threads.run { [state] in try state.settle(tag.rawValue, requeue: true) }
    }

    func close() async {
        // Not in the caller's task: a reader that stops because its task was cancelled closes its consumer from
        // that task, and a cancelled task's hops to the consumer's thread do not run, which would leave the
        // consumer subscribed, holding deliveries it never acknowledges (the broker sends it new ones too).
        await Task.detached { await self.closeNow() }.value
    }

    private func closeNow() async {
        self.received.withLock { $0.removeAll() }
        let reusable = (try? await self.threads.run { [state] in state.release() }) ?? false
        if !reusable || !self.pool.put(ConsumerPool.Idle(threads: self.threads, state: self.state, since: .now)) {
            await self.threads.runIfRunning { [state] in state.close() }
            await self.threads.shutDown()
        }
        self.onClose(ObjectIdentifier(self))
    }
}

/// Consumer connections (each with its thread) that finished a drain, kept for the next one: opening a
/// connection, logging in and starting a thread cost a few milliseconds for every reconnect of a user.
///
/// Bounded: at most `capacity` wait; one that waited longer than `maxIdle` (kept below the heartbeat, which an
/// idle rabbitmq-c connection does not answer) is closed instead of reused.
final class ConsumerPool: Sendable {
    /// A connection between two drains.
    struct Idle: Sendable {
        let threads: BlockingThreads
        let state: AMQPStreamConsumer.State
        let since: ContinuousClock.Instant
    }

    private struct Contents {
        var idle: [Idle] = []
        var closed = false
    }

    private let contents = Mutex(Contents())
    private let capacity: Int
    private let maxIdle: Duration

    init(capacity: Int, maxIdle: Duration) {
        self.capacity = capacity
        self.maxIdle = maxIdle
    }

    /// The most recently used connection that has not waited too long; those that did are closed.
    func take() async -> Idle? {
        let now = ContinuousClock.now
        let (fresh, stale) = self.contents.withLock { contents -> (Idle?, [Idle]) in
            var stale: [Idle] = []
            contents.idle.removeAll { idle in
                guard now - idle.since > self.maxIdle else { return false }
                stale.append(idle)
                return true
            }
            return (contents.idle.popLast(), stale)
        }
        for idle in stale { await Self.close(idle) }
        return fresh
    }

    /// Keeps `idle` for the next drain; false when the pool is full or closed (the caller closes it).
    func put(_ idle: Idle) -> Bool {
        self.contents.withLock { contents in
            guard !contents.closed, contents.idle.count < self.capacity else { return false }
            contents.idle.append(idle)
            return true
        }
    }

    /// Closes every waiting connection and keeps none from now on.
    func close() async {
        let idle = self.contents.withLock { contents in
            contents.closed = true
            defer { contents.idle = [] }
            return contents.idle
        }
        for entry in idle { await Self.close(entry) }
    }

    private static func close(_ idle: Idle) async {
        await idle.threads.runIfRunning { idle.state.close() }
        await idle.threads.shutDown()
    }
}
