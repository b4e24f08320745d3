import ArgumentParser
import ChatBrokerAMQP
import ChatDomain
import ChatPresenceRedis
import ChatStoreMongo
import ChatTransport
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `chatd serve`: the server.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve Socket.IO, the HTTP API, health and metrics (the default).")

    @OptionGroup var flags: ConfigurationFlags

    func run() async throws {
        let settings = try loadSettings(self.flags)
        let level = settings.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "chatd")

        if settings.isEmbedded {
            logger.notice("Embedded mode: no RabbitMQ, Redis or MongoDB configured; messages live in this process's memory and are lost when it stops")
        } else if settings.mongo == nil {
            logger.warning("The message store is in memory: chats and messages are lost when chatd stops although other services are configured; set MONGODB_URI")
        }
        for line in settings.summary { logger.info("Using \(line)") }
        if settings.jwtSecretIsDefault {
            logger.warning("JWT_SECRET is not set: tokens are signed with the public development secret (development mode only); set JWT_SECRET")
        }

        let store: any MessageStore
        var services: [any Service] = []
        if let mongo = settings.mongo {
            let mongoStore = try MongoMessageStore(configuration: mongo, logger: Logger(label: "chatd.store"))
            store = mongoStore
            services.append(mongoStore)
        } else {
            store = InMemoryMessageStore()
        }
        let queue: any MessageQueue
        if let amqp = settings.rabbitMQ {
            let rabbit = RabbitMQMessageQueue(configuration: amqp, logger: Logger(label: "chatd.queue"))
            queue = rabbit
            services.append(rabbit)
        } else {
            var configuration = InMemoryMessageQueue.Configuration()
            configuration.messageTTL = TimeInterval(settings.queueTTL.components.seconds)
            configuration.maxLength = settings.queueMaxLength
            queue = InMemoryMessageQueue(configuration: configuration)
        }
        let presence: any PresenceStore
        if let redis = settings.redis {
            let redisPresence = RedisPresenceStore(configuration: redis, logger: Logger(label: "chatd.presence"))
            presence = redisPresence
            services.append(redisPresence)
        } else {
            presence = InMemoryPresenceStore()
        }

        let authenticator = try await TokenAuthenticator(configuration: settings.tokens)
        let socketIO = try SocketIOServer(configuration: settings.socketIO, authenticator: authenticator, logger: Logger(label: "chatd.socketio"))
        let chat = try ChatService(
            configuration: settings.chatService,
            dependencies: .init(store: store, queue: queue, presence: presence, transport: socketIO, observer: MetricsObserver()),
            logger: Logger(label: "chatd.engine")
        )
        socketIO.serve(chat)

        let router = Router(context: ChatRequestContext.self)
        socketIO.addRoutes(to: router)
        ChatHTTPAPI(
            service: chat,
            store: store,
            authenticator: authenticator,
            socketIO: socketIO,
            limits: settings.httpAPI,
            logger: Logger(label: "chatd.http")
        )
            .addRoutes(to: router)
        router.get("/metrics") { _, _ in
            var buffer: [UInt8] = []
            registry.emit(into: &buffer)
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: buffer))
            )
        }
        let app = Application(
            router: router,
            server: socketIO.httpServer(router: router),
            configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: "chatd"),
            onServerRunning: { channel in
                logger.notice("chatd listening on \(settings.host):\(channel.localAddress?.port ?? settings.port) (Socket.IO at /socket.io/, API at /api, /healthz, /readyz, /metrics)")
            },
            logger: Logger(label: "chatd.http")
        )
        let exporter = StatisticsExporter(service: chat, socketIO: socketIO)

        // Shutdown runs in reverse: Socket.IO closes every session first (drains in flight hand their messages
        // back to the queue), then HTTP stops, then the engine flushes, then the adapters close.
        services += [chat, exporter, app, socketIO]
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
        logger.notice("chatd stopped")
    }
}

/// The engine's timings as Prometheus histograms (through swift-metrics).
struct MetricsObserver: DeliveryObserver {
    let latency = Metrics.Timer(label: "chatd_delivery_latency_seconds")
    let drain = Metrics.Timer(label: "chatd_drain_duration_seconds")

    func delivered(latency: Duration) { self.latency.recordNanoseconds(latency.nanoseconds) }
    func drained(messages: Int, duration: Duration) { self.drain.recordNanoseconds(duration.nanoseconds) }
}

extension Duration {
    /// The duration in whole nanoseconds.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = self.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// Publishes the engine's counters and the connection count as Prometheus metrics, once a second.
struct StatisticsExporter: Service {
    let service: ChatService
    let socketIO: SocketIOServer

    func run() async throws {
        let sent = Counter(label: "chatd_messages_sent_total")
        let deliveredLive = Counter(label: "chatd_messages_delivered_total", dimensions: [("path", "live")])
        let deliveredQueue = Counter(label: "chatd_messages_delivered_total", dimensions: [("path", "queue")])
        let deliveredStore = Counter(label: "chatd_messages_delivered_total", dimensions: [("path", "store")])
        let queued = Counter(label: "chatd_messages_queued_total")
        let queueRejected = Counter(label: "chatd_messages_queue_rejected_total")
        let failed = Counter(label: "chatd_messages_failed_total")
        let expired = Counter(label: "chatd_messages_expired_total")
        let unconfirmed = Counter(label: "chatd_messages_unconfirmed_total")
        let rejected = Counter(label: "chatd_sends_rejected_total")
        let sockets = Gauge(label: "chatd_connected_sockets")
        let sessions = Gauge(label: "chatd_engineio_sessions")
        let backlog = Gauge(label: "chatd_queue_backlog_estimate")
        let health = Gauge(label: "chatd_component_up", dimensions: [("component", "store")])
        let queueHealth = Gauge(label: "chatd_component_up", dimensions: [("component", "queue")])
        let presenceHealth = Gauge(label: "chatd_component_up", dimensions: [("component", "presence")])
        await cancelWhenGracefulShutdown {
            var last = DeliveryStatistics()
            while !Task.isCancelled {
                let now = await self.service.currentStatistics()
                sent.increment(by: now.messagesSent - last.messagesSent)
                deliveredLive.increment(by: now.deliveredLive - last.deliveredLive)
                deliveredQueue.increment(by: now.deliveredFromQueue - last.deliveredFromQueue)
                deliveredStore.increment(by: now.deliveredFromStore - last.deliveredFromStore)
                queued.increment(by: now.queued - last.queued)
                queueRejected.increment(by: now.queueRejected - last.queueRejected)
                failed.increment(by: now.failed - last.failed)
                expired.increment(by: now.expired - last.expired)
                unconfirmed.increment(by: now.unconfirmedLive - last.unconfirmedLive)
                rejected.increment(by: now.rejectedSends - last.rejectedSends)
                last = now
                sockets.record(self.socketIO.connectionCount)
                sessions.record(self.socketIO.sessionCount)
                // Entries this process queued and has not seen delivered, expired or dead-lettered since it started.
                backlog.record(max(0, now.queued - now.deliveredFromQueue - now.expired - now.failed))
                let report = await self.service.health()
                health.record(report.store == .ok ? 1 : 0)
                queueHealth.record(report.queue == .ok ? 1 : 0)
                presenceHealth.record(report.presence == .ok ? 1 : 0)
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
