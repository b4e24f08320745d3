import CRabbitMQ
import ChatAdapterSupport
import ChatDomain
import Foundation
import Logging

/// One rabbitmq-c connection with one channel in confirm mode, and the state tied to it.
///
/// Confinement: every method runs on the single thread of its ``RabbitMQMessageQueue``'s thread pool, never on
/// Swift's cooperative pool; rabbitmq-c connections are not thread-safe. That invariant is why the class may be
/// `@unchecked Sendable`: it only crosses into that thread.
final class AMQPConnection: @unchecked Sendable {
    private static let channel: amqp_channel_t = 1

    private let configuration: AMQPQueueConfiguration
    private let logger: Logger
    private var connection: amqp_connection_state_t?
    private var backoff: ReconnectBackoff
    /// Whether the current outage was logged (once per outage, until a connect succeeds).
    private var outageLogged = false
    /// Bumped whenever the channel is replaced: delivery tags of an earlier channel mean nothing any more.
    private(set) var generation: UInt64 = 0
    private var nextPublishSequence: UInt64 = 1
    private var declaredQueues: Set<String> = []

    init(configuration: AMQPQueueConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.backoff = ReconnectBackoff(configuration.reconnectBackoff)
    }

    deinit {
        self.close()
    }

    // MARK: Operations

    /// basic.get on `queue`; nil when it is empty.
    func get(_ queue: String) throws(AMQPQueueError) -> (body: [UInt8], tag: UInt64, redelivered: Bool, deathReason: String)? {
        try self.ensureConnected()
        guard let connection = self.connection else { throw self.notConnected() }
        var got = chatd_amqp_got_t()
        var reply = amqp_rpc_reply_t()
        let status = chatd_amqp_get(connection, Self.channel, queue, &got, &reply)
        if status < 0 { throw self.failure(reply) }
        guard status == 1 else { return nil }
        defer { free(got.body) }
        let body = [UInt8](UnsafeRawBufferPointer(start: got.body, count: got.length))
        let reason = withUnsafePointer(to: &got.death_reason) {
            $0.withMemoryRebound(to: CChar.self, capacity: 32) { String(cString: $0) }
        }
        return (body, got.delivery_tag, got.redelivered != 0, reason)
    }

    /// Acknowledges a `basic.get` delivery (the dead-letter reader's) of channel generation `generation`.
    func ack(_ tag: UInt64, generation: UInt64) throws(AMQPQueueError) {
        guard generation == self.generation, let connection = self.connection else {
            throw AMQPQueueError(code: .staleConsumer, message: "the connection was replaced; the broker requeued these deliveries")
        }
        let status = amqp_basic_ack(connection, Self.channel, tag, 0)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw self.lost(String(cString: chatd_amqp_status_text(status)))
        }
    }

    /// Ready messages and consumers of `queue` (0 when it does not exist yet).
    func depth(of queue: String) throws(AMQPQueueError) -> (messages: Int, consumers: Int) {
        try self.depthIfExists(of: queue) ?? (0, 0)
    }

    /// Ready messages and consumers of `queue`, nil when it does not exist (a passive declare).
    func depthIfExists(of queue: String) throws(AMQPQueueError) -> (messages: Int, consumers: Int)? {
        try self.ensureConnected()
        guard let connection = self.connection else { throw self.notConnected() }
        guard let ok = chatd_amqp_declare_queue(connection, Self.channel, queue, 1, 0, 0, 0, nil, 0) else {
            let error = self.failure(amqp_get_rpc_reply(connection))
            if error.code == .channelClosed, error.message.contains("404") { return nil }
            throw error
        }
        return (Int(ok.pointee.message_count), Int(ok.pointee.consumer_count))
    }

    /// Deletes `queue` if it has no consumer and no message: the number of messages the delete removed (0 for a
    /// classic queue, whose delete the broker refuses when the queue is in use), or nil when it was left alone
    /// (the broker refused; the channel is reopened). A queue that does not exist counts as deleted.
    ///
    /// Quorum queues support neither `if-unused` nor `if-empty`: for them the queue is checked just before an
    /// unconditional delete, so a message that lands in between is removed with it (the caller reports it) and a
    /// consumer that attaches in between is cancelled (its node declares and reads its inbox again at once).
    func deleteIfIdle(_ queue: String) throws(AMQPQueueError) -> Int? {
        let quorum = self.configuration.queueType == .quorum
        if quorum {
            guard let depth = try self.depthIfExists(of: queue) else { return 0 }
            if depth.consumers > 0 || depth.messages > 0 { return nil }
        }
        try self.ensureConnected()
        guard let connection = self.connection else { throw self.notConnected() }
        let conditional: amqp_boolean_t = quorum ? 0 : 1
        guard let ok = amqp_queue_delete(connection, Self.channel, amqp_cstring_bytes(queue), conditional, conditional) else {
            let error = self.failure(amqp_get_rpc_reply(connection))
            if error.code == .channelClosed, error.message.contains("406") { return nil }
            throw error
        }
        return Int(ok.pointee.message_count)
    }

    func close() {
        guard let connection = self.connection else { return }
        self.connection = nil
        _ = amqp_connection_close(connection, AMQP_REPLY_SUCCESS)
        _ = amqp_destroy_connection(connection)
    }

    // MARK: Connection and topology

    private func ensureConnected() throws(AMQPQueueError) {
        guard self.connection == nil else { return }
        if let wait = self.backoff.remaining(at: .now) {
            throw AMQPQueueError(
                code: .backingOff,
                message: "RabbitMQ at \(self.endpoint) was unreachable; next attempt in \(wait.wholeMilliseconds) ms"
            )
        }
        do {
            try self.connect()
            self.backoff.succeeded()
            self.outageLogged = false
            self.logger.info("Connected to RabbitMQ", metadata: ["amqp.endpoint": "\(self.endpoint)", "amqp.vhost": "\(self.configuration.virtualHost)"])
        } catch {
            if !self.outageLogged {
                // The product's own line, once per outage; the engine says what it means for delivery.
                self.outageLogged = true
                self.logger.warning(
                    "RabbitMQ connection failed, offline messaging disabled",
                    metadata: ["amqp.endpoint": "\(self.endpoint)", "error": "\(error)"]
                )
            }
            self.dropConnection()
            self.backoff.failed(at: .now)
            throw error
        }
    }

    private func connect() throws(AMQPQueueError) {
        self.connection = try Self.open(self.configuration)
        try self.openChannel()
        try self.declareTopology()
    }

    /// Opens a connection and logs in; the caller owns the returned connection.
    static func open(_ configuration: AMQPQueueConfiguration) throws(AMQPQueueError) -> amqp_connection_state_t {
        var status: Int32 = 0
        var reply = amqp_rpc_reply_t()
        let endpoint = "\(configuration.host):\(configuration.port)"
        guard
            let connection = chatd_amqp_connect(
                configuration.host, Int32(configuration.port), configuration.virtualHost,
                configuration.user, configuration.password,
                Int32(configuration.heartbeat.components.seconds), Int(configuration.connectTimeout.wholeMilliseconds),
                &status, &reply
            )
        else {
            throw AMQPQueueError(code: .connectionFailed, message: "cannot allocate a RabbitMQ connection")
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            _ = amqp_destroy_connection(connection)
            throw AMQPQueueError(
                code: .connectionFailed,
                message: "cannot connect to RabbitMQ at \(endpoint): \(String(cString: chatd_amqp_status_text(status)))"
            )
        }
        guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
            var text = [CChar](repeating: 0, count: 512)
            _ = chatd_amqp_describe(reply, &text, text.count)
            _ = amqp_destroy_connection(connection)
            throw AMQPQueueError(
                code: .connectionFailed,
                message: "RabbitMQ at \(endpoint) refused the login as '\(configuration.user)': \(Self.string(text)); check RABBITMQ_USER and RABBITMQ_PASSWORD"
            )
        }
        return connection
    }

    private func openChannel() throws(AMQPQueueError) {
        guard let connection = self.connection else { throw self.notConnected() }
        self.generation += 1
        self.declaredQueues = []
        _ = amqp_channel_open(connection, Self.channel)
        try self.check(amqp_get_rpc_reply(connection))
        _ = amqp_confirm_select(connection, Self.channel)
        try self.check(amqp_get_rpc_reply(connection))
        self.nextPublishSequence = 1
    }

    /// Exchanges and shared queues, declared idempotently at start and after every reconnect.
    private func declareTopology() throws(AMQPQueueError) {
        guard let connection = self.connection else { throw self.notConnected() }
        chatd_amqp_declare_exchange(connection, Self.channel, Topology.exchange, "direct")
        try self.check(amqp_get_rpc_reply(connection))
        chatd_amqp_declare_exchange(connection, Self.channel, Topology.deadLetterExchange, "fanout")
        try self.check(amqp_get_rpc_reply(connection))
        _ = chatd_amqp_declare_queue(connection, Self.channel, Topology.deadLetterQueue, 0, 0, 0, 0, nil, 0)
        try self.check(amqp_get_rpc_reply(connection))
        chatd_amqp_bind(connection, Self.channel, Topology.deadLetterQueue, Topology.deadLetterExchange, "")
        try self.check(amqp_get_rpc_reply(connection))
        _ = chatd_amqp_declare_queue(connection, Self.channel, Topology.deliveryQueue, 0, 7 * 24 * 3_600_000, 50_000, 0, nil, 0)
        try self.check(amqp_get_rpc_reply(connection))
        chatd_amqp_declare_exchange(connection, Self.channel, Topology.routeExchange, "direct")
        try self.check(amqp_get_rpc_reply(connection))
    }

    /// Declares `node`'s inbox (idempotent), connecting first if needed: durable, bounded with reject-publish (a
    /// full inbox refuses, and the sender queues offline instead), no TTL, no dead-lettering and never `x-expires`
    /// (entries wait for the node; the store holds them pending anyway), quorum when the queue type is.
    func ensureNodeQueue(of node: String) throws(AMQPQueueError) {
        try self.ensureConnected()
        guard let connection = self.connection else { throw self.notConnected() }
        let queue = Topology.nodeQueue(of: node)
        _ = chatd_amqp_declare_queue(
            connection, Self.channel, queue, 0, 0, Int64(self.configuration.maxLength), 1, nil,
            self.configuration.queueType == .quorum ? 1 : 0
        )
        try self.check(amqp_get_rpc_reply(connection))
        chatd_amqp_bind(connection, Self.channel, queue, Topology.routeExchange, node)
        try self.check(amqp_get_rpc_reply(connection))
    }

    /// Declares `user`'s queue (idempotent), connecting first if needed.
    func ensureQueue(of user: String) throws(AMQPQueueError) {
        try self.ensureConnected()
        try self.declareUserQueue(user)
    }

    /// The user's queue: durable, TTL, bounded with reject-publish, dead-lettered; never `x-expires`.
    private func declareUserQueue(_ user: String) throws(AMQPQueueError) {
        let queue = Topology.queue(of: user)
        guard !self.declaredQueues.contains(queue) else { return }
        guard let connection = self.connection else { throw self.notConnected() }
        _ = chatd_amqp_declare_queue(
            connection, Self.channel, queue, 0,
            Int64(self.configuration.messageTTL.wholeMilliseconds), Int64(self.configuration.maxLength), 1,
            Topology.deadLetterExchange, self.configuration.queueType == .quorum ? 1 : 0
        )
        try self.check(amqp_get_rpc_reply(connection))
        chatd_amqp_bind(connection, Self.channel, queue, Topology.exchange, user)
        try self.check(amqp_get_rpc_reply(connection))
        self.declaredQueues.insert(queue)
    }

    // MARK: Publishing

    /// A request whose messages are published and not all confirmed yet.
    private final class InFlight {
        let request: PublishRequest
        /// The sequence number of the request's first message; the others follow it.
        let first: UInt64
        let deadline: ContinuousClock.Instant
        /// Which messages the broker settled; below `lowestUnsettled` all are.
        var settled: [Bool]
        var lowestUnsettled = 0
        var remaining: Int
        var refused = Set<Int>()
        var returned = Set<Int>()
        var returnText = ""

        init(request: PublishRequest, first: UInt64, deadline: ContinuousClock.Instant) {
            self.request = request
            self.first = first
            self.deadline = deadline
            self.settled = Array(repeating: false, count: request.bodies.count)
            self.remaining = request.bodies.count
        }

        /// Settles the message with sequence number `sequence` if it is one of this request's.
        func settle(_ sequence: UInt64, refused: Bool) {
            guard sequence >= self.first, sequence < self.first + UInt64(self.settled.count) else { return }
            let index = Int(sequence - self.first)
            guard !self.settled[index] else { return }
            self.settled[index] = true
            self.remaining -= 1
            if refused { self.refused.insert(index) }
        }

        /// Settles every message up to sequence number `tag` (a `multiple` confirm).
        func settle(upTo tag: UInt64, refused: Bool) {
            guard tag >= self.first else { return }
            let end = min(self.settled.count, Int(tag - self.first) + 1)
            while self.lowestUnsettled < end {
                if !self.settled[self.lowestUnsettled] {
                    self.settled[self.lowestUnsettled] = true
                    self.remaining -= 1
                    if refused { self.refused.insert(self.lowestUnsettled) }
                }
                self.lowestUnsettled += 1
            }
        }
    }

    /// Requests published and waiting for confirms, oldest first. Empty whenever ``pump(_:reschedule:)`` is not
    /// running, so the other calls on this connection never see a confirm they do not expect.
    private var inFlight: [InFlight] = []

    /// Messages published and not yet completed (a request counts whole until all of it is confirmed).
    private var unconfirmed: Int {
        self.inFlight.reduce(0) { $0 + $1.settled.count }
    }

    /// Publishes what `inbox` holds, keeping up to ``publishWindow`` messages unconfirmed (a window, not batch and
    /// wait: requests that arrive while earlier ones wait for their confirms go out at the next confirm, without
    /// waiting for the rest), and completes each request once the broker confirmed all of its messages. Runs for
    /// one turn (``pumpTurn``) and then leaves the thread to the other calls: it stops taking requests, waits for
    /// the confirms it expects, and calls `reschedule` if requests are still waiting.
    func pump(_ inbox: PublishInbox, reschedule: () -> Void) {
        let started = ContinuousClock.now
        while true {
            let accepting = ContinuousClock.now - started < Self.pumpTurn
            for retry in self.retries.reversed() { inbox.putBack(retry) }
            self.retries = []
            if accepting {
                self.publishWaiting(inbox)
            }
            if self.inFlight.isEmpty {
                if inbox.stopIfEmpty() { return }
                if !accepting {
                    reschedule()
                    return
                }
                continue
            }
            // Wait for the next confirm; what arrived in the inbox meanwhile goes out right after it, together.
            // (Looking at the inbox every millisecond instead cost three times chatd's CPU per message on the full
            // stack: a wake-up per millisecond while a disk sync is pending.)
            self.awaitConfirm(timeout: self.inFlight[0].deadline - ContinuousClock.now)
        }
    }

    /// At most this many messages published and not yet confirmed (a larger request goes out alone).
    static let publishWindow = 1_000
    /// How long the pump keeps the thread while requests keep coming.
    static let pumpTurn: Duration = .milliseconds(50)

    private func publishWaiting(_ inbox: PublishInbox) {
        while self.inFlight.isEmpty || self.unconfirmed < Self.publishWindow, let request = inbox.takeFirst() {
            guard self.inFlight.isEmpty || self.unconfirmed + request.bodies.count <= Self.publishWindow else {
                inbox.putBack(request)
                return
            }
            let generation = self.generation
            do {
                try self.ensureConnected()
                if request.declaresUserQueue, !self.declaredQueues.contains(Topology.queue(of: request.routingKey)) {
                    // A declaration waits for its answer; confirms must not arrive meanwhile.
                    guard self.inFlight.isEmpty else {
                        inbox.putBack(request)
                        return
                    }
                    try self.declareUserQueue(request.routingKey)
                }
                try self.publish(request)
            } catch {
                request.complete(.failure(error))
                if self.generation != generation { self.failInFlight(error) }
            }
        }
    }

    private func publish(_ request: PublishRequest) throws(AMQPQueueError) {
        guard let connection = self.connection else { throw self.notConnected() }
        let entry = InFlight(request: request, first: self.nextPublishSequence, deadline: .now + self.configuration.confirmTimeout)
        for item in request.bodies {
            let status = item.body.withUnsafeBytes { buffer in
                chatd_amqp_publish(connection, Self.channel, request.exchange, request.routingKey, buffer.baseAddress, buffer.count, item.id)
            }
            guard status == AMQP_STATUS_OK.rawValue else { throw self.lost(String(cString: chatd_amqp_status_text(status))) }
            self.nextPublishSequence += 1
        }
        self.inFlight.append(entry)
    }

    /// Reads the next confirm (or return, or close) and completes the requests it settles.
    private func awaitConfirm(timeout: Duration) {
        guard let connection = self.connection else {
            self.failInFlight(self.notConnected())
            return
        }
        var tag: UInt64 = 0
        var multiple: Int32 = 0
        var text = [CChar](repeating: 0, count: 256)
        var key = [CChar](repeating: 0, count: 256)
        var id = [CChar](repeating: 0, count: 128)
        let kind = chatd_amqp_wait_confirm(
            connection, max(0, timeout.wholeMilliseconds), &tag, &multiple, &text, text.count, &key, key.count, &id, id.count
        )
        switch kind {
        case Int32(CHATD_AMQP_ACK), Int32(CHATD_AMQP_NACK):
            let refused = kind == Int32(CHATD_AMQP_NACK)
            for entry in self.inFlight {
                if multiple != 0 { entry.settle(upTo: tag, refused: refused) } else { entry.settle(tag, refused: refused) }
            }
            self.completeSettled()
        case Int32(CHATD_AMQP_RETURN):
            // The broker returns an unroutable message before it confirms it: note which one it was.
            let routingKey = Self.string(key)
            let messageID = Self.string(id)
            for entry in self.inFlight where entry.request.routingKey == routingKey {
                if let index = entry.request.bodies.indices.first(where: {
                    entry.request.bodies[$0].id == messageID && !entry.settled[$0] && !entry.returned.contains($0)
                }) {
                    entry.returned.insert(index)
                    entry.returnText = Self.string(text)
                    break
                }
            }
        case Int32(CHATD_AMQP_CHANNEL_CLOSED):
            // The publishes in flight died with the channel. A new one serves what comes next; if even that fails,
            // the connection is dropped and the next request reconnects.
            self.failInFlight(AMQPQueueError(code: .channelClosed, message: Self.string(text)))
            try? self.openChannel()
        case Int32(CHATD_AMQP_TIMEOUT):
            let now = ContinuousClock.now
            guard let oldest = self.inFlight.first, oldest.deadline <= now else { return }
            self.failInFlight(AMQPQueueError(
                code: .confirmTimeout,
                message: "RabbitMQ did not confirm \(self.unconfirmed) publishes within \(self.configuration.confirmTimeout)"
            ))
        default:
            self.failInFlight(self.lost(Self.string(text)))
        }
    }

    /// Completes (in publish order) the requests whose messages are all settled.
    private func completeSettled() {
        var done: [InFlight] = []
        self.inFlight.removeAll { entry in
            guard entry.remaining == 0 else { return false }
            done.append(entry)
            return true
        }
        for entry in done { self.finish(entry) }
    }

    private func finish(_ entry: InFlight) {
        let request = entry.request
        guard !entry.returned.isEmpty else {
            request.complete(.success(entry.refused))
            return
        }
        if request.returnsAreRefusals {
            request.complete(.success(entry.refused.union(entry.returned)))
            return
        }
        // Returned as unroutable: the queue was deleted behind our back. Declare it again and publish what came
        // back once more; a second return fails the request.
        guard request.declaresUserQueue, !request.isRetry else {
            request.complete(.failure(AMQPQueueError(code: .publishRefused, message: "returned as unroutable: \(entry.returnText)")))
            return
        }
        self.declaredQueues.remove(Topology.queue(of: request.routingKey))
        let indexes = entry.returned.sorted()
        let earlierRefused = entry.refused
        var retry = request
        retry.isRetry = true
        retry.bodies = indexes.map { request.bodies[$0] }
        retry.complete = { result in
            request.complete(result.map { refused in earlierRefused.union(refused.map { indexes[$0] }) })
        }
        self.retries.append(retry)
    }

    /// Returned publishes to try again, ahead of the inbox (the pump puts them back in front).
    private var retries: [PublishRequest] = []

    /// Fails every request in flight with `error` (the channel or connection they were published on is gone).
    private func failInFlight(_ error: AMQPQueueError) {
        let failed = self.inFlight
        self.inFlight = []
        for entry in failed { entry.request.complete(.failure(error)) }
    }

    // MARK: Errors

    /// The text in a NUL-terminated buffer the shim filled.
    static func string(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private var endpoint: String { "\(self.configuration.host):\(self.configuration.port)" }

    private func check(_ reply: amqp_rpc_reply_t) throws(AMQPQueueError) {
        guard reply.reply_type != AMQP_RESPONSE_NORMAL else { return }
        throw self.failure(reply)
    }

    /// Maps a failed reply to an error; a closed channel is answered and reopened, a broken connection dropped.
    private func failure(_ reply: amqp_rpc_reply_t) -> AMQPQueueError {
        var text = [CChar](repeating: 0, count: 512)
        let kind = chatd_amqp_describe(reply, &text, text.count)
        let message = Self.string(text)
        if kind == 2, let connection = self.connection {
            chatd_amqp_close_ok(connection, Self.channel)
            do {
                try self.openChannel()
            } catch {
                return error
            }
            return AMQPQueueError(code: .channelClosed, message: message)
        }
        return self.lost(message)
    }

    private func lost(_ message: String) -> AMQPQueueError {
        self.dropConnection()
        return AMQPQueueError(code: .connectionLost, message: "lost the connection to RabbitMQ at \(self.endpoint): \(message)")
    }

    private func notConnected() -> AMQPQueueError {
        AMQPQueueError(code: .connectionLost, message: "not connected to RabbitMQ at \(self.endpoint)")
    }

    /// Forgets a broken connection without the close handshake (the socket is gone).
    private func dropConnection() {
        guard let connection = self.connection else { return }
        self.connection = nil
        self.generation += 1
        _ = amqp_destroy_connection(connection)
    }
}
