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

    /// Publishes `bodies` to `user`'s queue and waits until the broker confirmed each; returns the indexes it
    /// refused (a full queue refuses with a nack).
    func publish(_ bodies: [(id: String, body: [UInt8])], to user: String) throws(AMQPQueueError) -> Set<Int> {
        try self.ensureConnected()
        try self.declareUserQueue(user)
        do {
            return try self.publishConfirmed(bodies, exchange: Topology.exchange, routingKey: user)
        } catch where error.code == .publishRefused && error.message.hasPrefix("returned") {
            // Unroutable: the queue was deleted behind our back. Declare it again and retry once.
            self.declaredQueues.remove(Topology.queue(of: user))
            try self.declareUserQueue(user)
            return try self.publishConfirmed(bodies, exchange: Topology.exchange, routingKey: user)
        }
    }

    /// Publishes delivery events to `message_delivery` (through the default exchange), confirmed.
    func publishEvents(_ bodies: [(id: String, body: [UInt8])]) throws(AMQPQueueError) {
        try self.ensureConnected()
        _ = try self.publishConfirmed(bodies, exchange: "", routingKey: Topology.deliveryQueue)
    }

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

    /// Ready messages and consumers of `user`'s queue (0 when it does not exist yet).
    func depth(of queue: String) throws(AMQPQueueError) -> (messages: Int, consumers: Int) {
        try self.ensureConnected()
        guard let connection = self.connection else { throw self.notConnected() }
        guard let ok = chatd_amqp_declare_queue(connection, Self.channel, queue, 1, 0, 0, 0, nil, 0) else {
            let error = self.failure(amqp_get_rpc_reply(connection))
            if error.code == .channelClosed, error.message.contains("404") { return (0, 0) }
            throw error
        }
        return (Int(ok.pointee.message_count), Int(ok.pointee.consumer_count))
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

    private func publishConfirmed(
        _ bodies: [(id: String, body: [UInt8])],
        exchange: String,
        routingKey: String
    ) throws(AMQPQueueError) -> Set<Int> {
        guard let connection = self.connection else { throw self.notConnected() }
        let first = self.nextPublishSequence
        for item in bodies {
            let status = item.body.withUnsafeBytes { buffer in
                chatd_amqp_publish(connection, Self.channel, exchange, routingKey, buffer.baseAddress, buffer.count, item.id)
            }
            guard status == AMQP_STATUS_OK.rawValue else { throw self.lost(String(cString: chatd_amqp_status_text(status))) }
            self.nextPublishSequence += 1
        }
        var unconfirmed = Set(first..<self.nextPublishSequence)
        var refused = Set<Int>()
        var returned: String?
        let deadline = ContinuousClock.now + self.configuration.confirmTimeout
        while !unconfirmed.isEmpty {
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else {
                throw AMQPQueueError(
                    code: .confirmTimeout,
                    message: "RabbitMQ did not confirm \(unconfirmed.count) publishes within \(self.configuration.confirmTimeout)"
                )
            }
            var tag: UInt64 = 0
            var multiple: Int32 = 0
            var text = [CChar](repeating: 0, count: 256)
            let kind = chatd_amqp_wait_confirm(connection, remaining.wholeMilliseconds, &tag, &multiple, &text, text.count)
            let message = Self.string(text)
            switch kind {
            case Int32(CHATD_AMQP_ACK), Int32(CHATD_AMQP_NACK):
                // Confirms may come batched (`multiple`): every sequence number up to the tag is settled.
                let settled = multiple != 0 ? unconfirmed.filter { $0 <= tag } : unconfirmed.filter { $0 == tag }
                unconfirmed.subtract(settled)
                if kind == Int32(CHATD_AMQP_NACK) {
                    refused.formUnion(settled.map { Int($0 - first) })
                }
            case Int32(CHATD_AMQP_RETURN):
                returned = message
            case Int32(CHATD_AMQP_CHANNEL_CLOSED):
                try self.openChannel()
                throw AMQPQueueError(code: .channelClosed, message: message)
            case Int32(CHATD_AMQP_TIMEOUT):
                continue
            default:
                throw self.lost(message)
            }
        }
        if let returned {
            throw AMQPQueueError(code: .publishRefused, message: "returned as unroutable: \(returned)")
        }
        return refused
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
