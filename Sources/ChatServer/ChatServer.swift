import ChatBrokerAMQP
public import ChatDomain
import ChatPresenceRedis
import ChatStoreMongo
import ChatStoreSQLite
public import ChatTransport
import ChatWebhook
import Foundation
public import Hummingbird
import HummingbirdWebSocket
public import Logging
import Metrics
import NIOCore
import Prometheus
public import ServiceLifecycle

/// chatd as one application: the adapters its settings name, the engine, the Socket.IO endpoint, the HTTP API,
/// health and metrics. `chatd serve` builds it and runs it; tests build it in-process.
///
/// ```swift
/// let server = try await ChatServer.build(settings: try ChatServerSettings.resolve(environment: [:]), logger: logger)
/// try await server.run()
/// ```
public struct ChatServer: Sendable {
    /// The Hummingbird application: Socket.IO at `/socket.io/`, the API at `/api`, `/healthz`, `/readyz`, `/metrics`.
    public let application: Application<RouterResponder<ChatRequestContext>>
    /// The delivery engine.
    public let engine: ChatService
    /// The Socket.IO endpoint.
    public let socketIO: SocketIOServer
    /// The services to run, in start order; they stop in reverse: Socket.IO closes its sessions first (drains in
    /// flight hand their messages back to the queue), then HTTP stops, then the engine flushes, then the adapters
    /// close.
    public let services: [any Service]
    /// The settings it was built from.
    public let settings: ChatServerSettings
    let logger: Logger

    /// Every service but the HTTP server, for tests that drive the application through Hummingbird's router
    /// test client.
    var backgroundServices: [any Service] {
        self.services.filter { !($0 is Application<RouterResponder<ChatRequestContext>>) }
    }

    /// Builds the application from `settings`; nothing connects or listens until ``run()``.
    /// - Parameter onListening: called with the bound port once the server listens (after `PORT_FILE` is written).
    /// - Throws: ``ChatServerSettings/Invalid`` when a setting cannot be used (a MongoDB URI the driver refuses).
    public static func build(
        settings: ChatServerSettings,
        logger: Logger,
        onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws -> ChatServer {
        let adapters = try Adapters(settings: settings)
        let registry = PrometheusCollectorRegistry()
        let metrics = PrometheusMetricsFactory(registry: registry)
        let authenticator = try await TokenAuthenticator(configuration: settings.tokens)
        let socketIO = try SocketIOServer(configuration: settings.socketIO, authenticator: authenticator, logger: Logger(label: "chatd.socketio")) {
            transport in
            try ChatService(
                configuration: settings.chatService,
                dependencies: .init(
                    store: adapters.store,
                    queue: adapters.queue,
                    presence: adapters.presence,
                    transport: transport,
                    observer: MetricsObserver(factory: metrics),
                    relay: adapters.relay,
                    receiptOutbox: adapters.receiptOutbox
                ),
                logger: Logger(label: "chatd.engine")
            )
        }
        let engine = socketIO.chatService
        let router = Router(context: ChatRequestContext.self)
        socketIO.addRoutes(to: router)
        ChatHTTPAPI(service: engine, authenticator: authenticator, logger: Logger(label: "chatd.http")).addRoutes(to: router)
        router.get("/metrics") { _, _ in
            var buffer: [UInt8] = []
            registry.emit(into: &buffer)
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: buffer))
            )
        }
        let host = settings.host
        let portFile = settings.portFile
        let application = Application(
            router: router,
            server: socketIO.httpServer(router: router),
            configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: "chatd"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                if let portFile {
                    do {
                        try Data("\(port)\n".utf8).write(to: URL(fileURLWithPath: portFile), options: .atomic)
                    } catch {
                        logger.error("Could not write PORT_FILE", metadata: ["file": "\(portFile)", "error": "\(error)"])
                    }
                }
                logger.notice("chatd listening on \(host):\(port) (Socket.IO at /socket.io/, API at /api, /healthz, /readyz, /metrics)")
                await onListening(port)
            },
            logger: Logger(label: "chatd.http")
        )
        var exporter = StatisticsExporter(service: engine, socketIO: socketIO, factory: metrics)
        if let broker = adapters.broker {
            let node = settings.nodeID
            exporter.inboxDepth = { try? await broker.inboxDepth(of: node)?.ready }
        }
        var webhook: [any Service] = []
        if let configuration = settings.receiptsWebhook, let outbox = adapters.receiptOutbox {
            webhook.append(ReceiptsWebhook(configuration: configuration, outbox: outbox, logger: Logger(label: "chatd.webhook"), metrics: metrics))
        }
        return ChatServer(
            application: application,
            engine: engine,
            socketIO: socketIO,
            // The webhook stops before the engine's last receipt events are flushed; they wait in the outbox.
            services: adapters.services + [engine] + webhook + [exporter, application, socketIO],
            settings: settings,
            logger: logger
        )
    }

    /// Re-seals every stored message under the current key (`chatd reencrypt`), `batch` at a time, reporting after
    /// each batch; resumable (messages already under the current key are only read).
    /// - Throws: ``ChatServerSettings/Invalid`` without `ENCRYPTION_KEY` or with nothing stored to re-seal (in memory).
    public static func reencrypt(
        settings: ChatServerSettings,
        batch: Int,
        logger: Logger,
        progress: (Reencryption.Report) -> Void
    ) async throws -> Reencryption.Report {
        guard let sealer = settings.sealer else {
            throw ChatServerSettings.Invalid(description: "chatd reencrypt seals under the current key: set ENCRYPTION_KEY and ENCRYPTION_KEY_ID (and ENCRYPTION_OLD_KEYS for the keys being retired)")
        }
        let store: any MessageStore & MessageContentRewriting
        var close: () async -> Void = {}
        if let mongo = settings.mongo {
            let adapter = try MongoMessageStore(configuration: mongo, logger: logger)
            store = adapter
            close = { await adapter.close() }
        } else if let sqlite = settings.sqlite {
            do {
                let adapter = try SQLiteChatStore(configuration: sqlite, logger: logger)
                store = adapter
                close = { await adapter.close() }
            } catch {
                throw ChatServerSettings.Invalid(description: "\(error.message) (chatd reencrypt opens the embedded file, so stop the serving chatd first)")
            }
        } else {
            throw ChatServerSettings.Invalid(description: "nothing to re-encrypt: with IN_MEMORY=true messages live only in the serving process")
        }
        let sealing = SealingMessageStore(base: store, sealer: sealer, scope: settings.encryptionScope, logger: logger)
        do {
            let report = try await Reencryption(store: sealing, rewriting: store).run(batch: batch, progress: progress)
            await close()
            return report
        } catch {
            await close()
            throw error
        }
    }

    /// Runs every service until SIGTERM or SIGINT (or until the task is cancelled), then stops them in order.
    public func run() async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: self.services.map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: self.logger
            )
        )
        try await group.run()
    }
}

/// The adapter for each port: the configured service's, else the in-memory one. One table, one rule.
struct Adapters {
    var store: any MessageStore
    var queue: any MessageQueue
    var presence: any PresenceStore
    /// Carries live messages to the other nodes: the RabbitMQ adapter when both RabbitMQ and Redis are configured
    /// (presence in Redis is what says where a user is connected); none otherwise.
    var relay: (any NodeRelay)?
    /// The RabbitMQ adapter when it is the relay (for its inbox depth).
    var broker: RabbitMQMessageQueue?
    /// Where receipt events wait for the webhook: the store when it is durable (MongoDB, SQLite), else memory; none
    /// without a webhook.
    var receiptOutbox: (any ReceiptOutbox)?
    /// The adapters that run as services (their threads and connections close on shutdown).
    var services: [any Service] = []

    init(settings: ChatServerSettings) throws {
        var services: [any Service] = []
        /// The configured adapter (which also runs as a service), or the in-memory fallback.
        func choose<Configuration, Port, Adapter: Service>(
            _ configuration: Configuration?,
            _ make: (Configuration) throws -> Adapter,
            as port: (Adapter) -> Port,
            otherwise fallback: @autoclosure () -> Port
        ) rethrows -> Port {
            guard let configuration else { return fallback() }
            let adapter = try make(configuration)
            services.append(adapter)
            return port(adapter)
        }
        var inMemoryQueue = InMemoryMessageQueue.Configuration()
        inMemoryQueue.messageTTL = TimeInterval(settings.queueTTL.components.seconds)
        inMemoryQueue.maxLength = settings.queueMaxLength

        // What no service holds is kept in the embedded SQLite file (unless in memory was asked for).
        var embedded: SQLiteChatStore?
        if let sqlite = settings.sqlite {
            let directory = URL(fileURLWithPath: sqlite.path).deletingLastPathComponent()
            do {
                try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
                let file = try SQLiteChatStore(configuration: sqlite, logger: Logger(label: "chatd.store"))
                services.append(file)
                embedded = file
            } catch let error as SQLiteStoreError {
                throw ChatServerSettings.Invalid(description: "\(error.message) (DATA_DIR, or --data-dir; IN_MEMORY=true keeps everything in memory)")
            } catch {
                throw ChatServerSettings.Invalid(
                    description: "cannot create the data directory \(directory.path): \(error.localizedDescription); set DATA_DIR (or --data-dir) to a writable directory"
                )
            }
        }
        self.store = try choose(
            settings.mongo, { try MongoMessageStore(configuration: $0, logger: Logger(label: "chatd.store")) },
            as: { $0 as any MessageStore }, otherwise: embedded.map { $0 as any MessageStore } ?? InMemoryMessageStore()
        )
        self.queue = choose(
            settings.rabbitMQ, { RabbitMQMessageQueue(configuration: $0, logger: Logger(label: "chatd.queue")) },
            as: { $0 as any MessageQueue }, otherwise: embedded.map { $0 as any MessageQueue } ?? InMemoryMessageQueue(configuration: inMemoryQueue)
        )
        self.presence = choose(
            settings.redis, { RedisPresenceStore(configuration: $0, logger: Logger(label: "chatd.presence")) },
            as: { $0 as any PresenceStore }, otherwise: InMemoryPresenceStore()
        )
        self.relay = settings.redis == nil ? nil : self.queue as? any NodeRelay
        self.broker = self.relay as? RabbitMQMessageQueue
        if settings.receiptsWebhook != nil {
            self.receiptOutbox = self.store as? any ReceiptOutbox ?? InMemoryReceiptOutbox(capacity: settings.receiptOutboxCapacity)
        }
        // Content is sealed on its way to the store, the queue and other nodes' inboxes, and opened on its way back.
        if let sealer = settings.sealer {
            let sealing = SealingMessageStore(base: self.store, sealer: sealer, scope: settings.encryptionScope, logger: Logger(label: "chatd.encryption"))
            self.store = sealing
            self.queue = SealingMessageQueue(base: self.queue, store: sealing)
            self.relay = self.relay.map { SealingNodeRelay(base: $0, store: sealing) }
        }
        self.services = services
    }
}
