public import ChatBrokerAMQP
public import ChatDomain
public import ChatPresenceRedis
public import ChatStoreMongo
public import ChatStoreSQLite
public import ChatTransport
public import ChatEncryption
public import ChatWebhook
import Foundation
public import Logging

/// chatd's settings: each from its command-line flag, else its environment variable, else the product's default.
/// A service (RabbitMQ, Redis, MongoDB) is used only when its host or URI is set; otherwise its in-memory adapter is.
public struct ChatServerSettings: Sendable {
    /// The development secret used when `JWT_SECRET` is not set (chatd warns about it at startup).
    public static let developmentSecret = "chatd-development-secret-do-not-use-in-production"

    /// `development` (the default) or `production`; production, or any configured service, requires JWT_SECRET.
    var environmentName = "development"
    /// The address to listen on (`HOST`).
    public var host = "127.0.0.1"
    /// The port to listen on (`PORT`); 0 picks a free one.
    public var port = 3000
    /// Where to write the port once listening (`PORT_FILE`), for scripts and tests that start chatd on port 0.
    public var portFile: String?
    /// The log level (`LOG_LEVEL`).
    public var logLevel = Logger.Level.info
    var jwtSecret = ChatServerSettings.developmentSecret
    /// Whether tokens are signed with the public development secret (`JWT_SECRET` unset).
    public internal(set) var jwtSecretIsDefault = true
    var jwtIssuer: String?
    var jwtAudience: String?
    /// The longest token lifetime accepted; nil for no cap.
    var jwtMaxTTL: Duration? = .seconds(24 * 60 * 60)
    /// This node's id (`NODE_ID`); by default the host name and a random suffix, so two processes on one host
    /// never share an id (a restarted one is a new node; the janitor cleans up after the old one).
    var nodeID = NodeID("\(ProcessInfo.processInfo.hostName)-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))")
    /// How long a node's connections count as online after its last heartbeat (heartbeats every third of it).
    var presenceTTL: Duration = .seconds(15)
    /// The offline queue on RabbitMQ, when `RABBITMQ_HOST` is set.
    public var rabbitMQ: AMQPQueueConfiguration?
    /// Presence on Redis, when `REDIS_HOST` is set.
    public var redis: RedisPresenceConfiguration?
    /// The message store on MongoDB, when `MONGODB_URI` is set.
    public var mongo: MongoStoreConfiguration?
    /// Where chatd keeps what no configured service holds (`DATA_DIR`, default `./chatd-data`).
    var dataDirectory = "./chatd-data"
    /// Whether what no service holds lives in this process's memory instead (`IN_MEMORY=true`, `--in-memory`):
    /// for tests and demos; everything is lost when chatd stops.
    var inMemory = false
    /// How hard a commit to the embedded file waits for the disk (`SQLITE_SYNCHRONOUS`, normal or full).
    var sqliteSynchronous: SQLiteStoreConfiguration.Synchronous = .normal
    var queueTTL: Duration = .seconds(24 * 60 * 60)
    var queueMaxLength = 100_000
    var drainPrefetch = 64
    var pingInterval: Duration = .seconds(25)
    var pingTimeout: Duration = .seconds(20)
    var ackTimeout: Duration = .seconds(10)
    var connectTimeout: Duration = .seconds(45)
    var maxSessionsPerAddress = 100
    var handshakeRate: RateLimit? = RateLimit(rate: 10, burst: 50)
    var trustedProxies: [String] = []
    var maxConnectionsPerUser = 20
    var sendRate: RateLimit? = RateLimit(rate: 20, burst: 60)
    var fanOutRate: RateLimit? = RateLimit(rate: 2_000, burst: 10_000)
    var maxChatParticipants = 1_000
    var maxChatsPerUser = 1_000
    var requireChatAcceptance = false
    /// Seals message content at rest, when `ENCRYPTION_KEY` is set (with `ENCRYPTION_KEY_ID`, `ENCRYPTION_OLD_KEYS`).
    public var sealer: AESGCMSealer?
    /// Which chats are sealed (`ENCRYPTION_SCOPE`: `all`, the default, or `flagged`).
    public var encryptionScope = EncryptionScope.all
    /// How long a `typing:start` holds without a refresh (`TYPING_TTL_MS`).
    var typingTTL: Duration = .seconds(6)
    /// The receipts webhook, when `RECEIPTS_WEBHOOK_URL` is set.
    public var receiptsWebhook: ReceiptsWebhookConfiguration?
    /// The most receipt events waiting for the webhook (`RECEIPTS_OUTBOX_MAX`); past it the oldest are dropped.
    var receiptOutboxCapacity = 100_000
    var httpIdleTimeout: Duration = .seconds(60)
    var httpHeaderTimeout: Duration = .seconds(10)
    var maxHTTPConnections = ChatServerSettings.defaultMaxHTTPConnections

    /// The defaults: embedded (in-memory adapters), development, port 3000.
    public init() {}

    /// A setting has a value chatd cannot use; the message names the variable or flag.
    public struct Invalid: Error, CustomStringConvertible {
        /// What is wrong and which variable or flag to fix.
        public var description: String
    }

    /// Resolves the settings from `flags` (flag name without dashes → value) over `environment`.
    /// - Throws: ``Invalid`` naming the variable or flag whose value cannot be used.
    public static func resolve(flags: [String: String] = [:], environment: [String: String]) throws(Invalid) -> ChatServerSettings {
        let reader = Reader(flags: flags, environment: environment)
        var settings = ChatServerSettings()
        settings.host = reader.string("HOST", flag: "host") ?? settings.host
        settings.port = try reader.int("PORT", flag: "port", in: 0...65535) ?? settings.port
        settings.portFile = reader.string("PORT_FILE", flag: "port-file")
        if let level = reader.string("LOG_LEVEL", flag: "log-level") {
            guard let parsed = Logger.Level(rawValue: level.lowercased()) else {
                throw Invalid(description: "LOG_LEVEL (or --log-level) must be one of trace, debug, info, notice, warning, error, critical (got '\(level)')")
            }
            settings.logLevel = parsed
        }
        if let name = reader.string("CHATD_ENV", flag: "env") {
            guard ["development", "production"].contains(name.lowercased()) else {
                throw Invalid(description: "CHATD_ENV (or --env) must be development or production (got '\(name)')")
            }
            settings.environmentName = name.lowercased()
        }
        if let secret = reader.string("JWT_SECRET", flag: "jwt-secret") {
            guard secret.utf8.count >= 32 else {
                throw Invalid(description: "JWT_SECRET (or --jwt-secret) must be at least 32 bytes long (got \(secret.utf8.count))")
            }
            settings.jwtSecret = secret
            settings.jwtSecretIsDefault = false
        }
        settings.jwtIssuer = reader.string("JWT_ISSUER", flag: "jwt-issuer")
        settings.jwtAudience = reader.string("JWT_AUDIENCE", flag: "jwt-audience")
        if let ttl = try reader.int("JWT_MAX_TTL", flag: "jwt-max-ttl", in: 0...(365 * 24 * 3600)) {
            settings.jwtMaxTTL = ttl == 0 ? nil : .seconds(ttl)
        }
        if let ms = try reader.int("CONNECT_TIMEOUT_MS", flag: "connect-timeout-ms", in: 100...3_600_000) {
            settings.connectTimeout = .milliseconds(ms)
        }
        settings.maxSessionsPerAddress =
            try reader.int("MAX_SESSIONS_PER_ADDRESS", flag: "max-sessions-per-address", in: 0...10_000_000) ?? settings.maxSessionsPerAddress
        settings.handshakeRate = try reader.rate(
            "HANDSHAKE_RATE_PER_ADDRESS", flag: "handshake-rate-per-address",
            burst: "HANDSHAKE_BURST_PER_ADDRESS", burstFlag: "handshake-burst-per-address", default: settings.handshakeRate
        )
        if let proxies = reader.string("TRUSTED_PROXIES", flag: "trusted-proxies") {
            settings.trustedProxies = proxies.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        settings.maxConnectionsPerUser =
            try reader.int("MAX_CONNECTIONS_PER_USER", flag: "max-connections-per-user", in: 1...1_000_000) ?? settings.maxConnectionsPerUser
        settings.sendRate = try reader.rate(
            "SEND_RATE_PER_USER", flag: "send-rate-per-user", burst: "SEND_BURST_PER_USER", burstFlag: "send-burst-per-user",
            default: settings.sendRate
        )
        settings.fanOutRate = try reader.rate(
            "FANOUT_RATE_PER_USER", flag: "fanout-rate-per-user", burst: "FANOUT_BURST_PER_USER", burstFlag: "fanout-burst-per-user",
            default: settings.fanOutRate
        )
        settings.maxChatParticipants =
            try reader.int("MAX_CHAT_PARTICIPANTS", flag: "max-chat-participants", in: 2...1_000_000) ?? settings.maxChatParticipants
        settings.maxChatsPerUser = try reader.int("MAX_CHATS_PER_USER", flag: "max-chats-per-user", in: 1...10_000_000) ?? settings.maxChatsPerUser
        if let acceptance = reader.string("CHAT_ACCEPTANCE", flag: "chat-acceptance") {
            guard ["off", "required"].contains(acceptance.lowercased()) else {
                throw Invalid(description: "CHAT_ACCEPTANCE (or --chat-acceptance) must be off or required (got '\(acceptance)')")
            }
            settings.requireChatAcceptance = acceptance.lowercased() == "required"
        }
        if let ms = try reader.int("HTTP_IDLE_TIMEOUT_MS", flag: "http-idle-timeout-ms", in: 100...86_400_000) {
            settings.httpIdleTimeout = .milliseconds(ms)
        }
        if let ms = try reader.int("HTTP_HEADER_TIMEOUT_MS", flag: "http-header-timeout-ms", in: 100...3_600_000) {
            settings.httpHeaderTimeout = .milliseconds(ms)
        }
        settings.maxHTTPConnections =
            try reader.int("MAX_HTTP_CONNECTIONS", flag: "max-http-connections", in: 1...10_000_000) ?? settings.maxHTTPConnections
        if let node = reader.string("NODE_ID", flag: "node-id") { settings.nodeID = NodeID(node) }
        if let ms = try reader.int("PRESENCE_TTL_MS", flag: "presence-ttl-ms", in: 3_000...3_600_000) {
            settings.presenceTTL = .milliseconds(ms)
        }
        if let ttl = try reader.int("QUEUE_TTL_SECONDS", flag: "queue-ttl-seconds", in: 1...(365 * 24 * 3600)) {
            settings.queueTTL = .seconds(ttl)
        }
        settings.queueMaxLength = try reader.int("QUEUE_MAX_LENGTH", flag: "queue-max-length", in: 1...100_000_000) ?? settings.queueMaxLength
        settings.drainPrefetch = try reader.int("QUEUE_PREFETCH", flag: "queue-prefetch", in: 1...65535) ?? settings.drainPrefetch
        if let ms = try reader.int("PING_INTERVAL_MS", flag: "ping-interval-ms", in: 50...3_600_000) { settings.pingInterval = .milliseconds(ms) }
        if let ms = try reader.int("PING_TIMEOUT_MS", flag: "ping-timeout-ms", in: 50...3_600_000) { settings.pingTimeout = .milliseconds(ms) }
        if let ms = try reader.int("ACK_TIMEOUT_MS", flag: "ack-timeout-ms", in: 10...3_600_000) { settings.ackTimeout = .milliseconds(ms) }
        if let ms = try reader.int("TYPING_TTL_MS", flag: "typing-ttl-ms", in: 100...3_600_000) { settings.typingTTL = .milliseconds(ms) }
        settings.receiptOutboxCapacity =
            try reader.int("RECEIPTS_OUTBOX_MAX", flag: "receipts-outbox-max", in: 1...100_000_000) ?? settings.receiptOutboxCapacity
        if let key = reader.string("ENCRYPTION_KEY", flag: "encryption-key") {
            do {
                settings.sealer = try AESGCMSealer(
                    key: key,
                    keyID: reader.string("ENCRYPTION_KEY_ID", flag: "encryption-key-id"),
                    oldKeys: reader.string("ENCRYPTION_OLD_KEYS", flag: "encryption-old-keys")
                )
            } catch {
                throw Invalid(description: error.message)
            }
        } else if reader.string("ENCRYPTION_OLD_KEYS", flag: "encryption-old-keys") != nil || reader.string("ENCRYPTION_KEY_ID", flag: "encryption-key-id") != nil {
            throw Invalid(description: "ENCRYPTION_KEY_ID and ENCRYPTION_OLD_KEYS need ENCRYPTION_KEY (the current key, base64 of 32 bytes); set it, or unset them")
        }
        if let scope = reader.string("ENCRYPTION_SCOPE", flag: "encryption-scope") {
            guard let parsed = EncryptionScope(rawValue: scope.lowercased()) else {
                throw Invalid(description: "ENCRYPTION_SCOPE (or --encryption-scope) must be all or flagged (got '\(scope.prefix(64))')")
            }
            guard settings.sealer != nil else {
                throw Invalid(description: "ENCRYPTION_SCOPE needs ENCRYPTION_KEY and ENCRYPTION_KEY_ID: without a key nothing is encrypted")
            }
            settings.encryptionScope = parsed
        }
        if let url = reader.string("RECEIPTS_WEBHOOK_URL", flag: "receipts-webhook-url") {
            do {
                settings.receiptsWebhook = try ReceiptsWebhookConfiguration(
                    url: url,
                    secret: reader.string("RECEIPTS_WEBHOOK_SECRET", flag: "receipts-webhook-secret")
                )
            } catch {
                throw Invalid(description: error.message.replacingOccurrences(of: "RECEIPTS_WEBHOOK_URL", with: "RECEIPTS_WEBHOOK_URL (or --receipts-webhook-url)"))
            }
        }

        if let host = reader.string("RABBITMQ_HOST", flag: "rabbitmq-host") {
            var amqp = AMQPQueueConfiguration()
            amqp.host = host
            amqp.port = try reader.int("RABBITMQ_PORT", flag: "rabbitmq-port", in: 1...65535) ?? amqp.port
            amqp.user = reader.string("RABBITMQ_USER", flag: "rabbitmq-user") ?? amqp.user
            amqp.password = reader.string("RABBITMQ_PASSWORD", flag: "rabbitmq-password") ?? amqp.password
            amqp.virtualHost = reader.string("RABBITMQ_VHOST", flag: "rabbitmq-vhost") ?? amqp.virtualHost
            if let type = reader.string("RABBITMQ_QUEUE_TYPE", flag: "rabbitmq-queue-type") {
                guard let queueType = AMQPQueueConfiguration.QueueType(rawValue: type) else {
                    throw Invalid(description: "RABBITMQ_QUEUE_TYPE (or --rabbitmq-queue-type) must be classic or quorum (got '\(type)')")
                }
                amqp.queueType = queueType
            }
            amqp.messageTTL = settings.queueTTL
            amqp.maxLength = settings.queueMaxLength
            settings.rabbitMQ = amqp
        }
        if let host = reader.string("REDIS_HOST", flag: "redis-host") {
            var redis = RedisPresenceConfiguration()
            redis.host = host
            redis.port = try reader.int("REDIS_PORT", flag: "redis-port", in: 1...65535) ?? redis.port
            redis.password = reader.string("REDIS_PASSWORD", flag: "redis-password")
            redis.database = try reader.int("REDIS_DB", flag: "redis-db", in: 0...1_000_000) ?? redis.database
            redis.presenceTTL = settings.presenceTTL
            settings.redis = redis
        }
        settings.dataDirectory = reader.string("DATA_DIR", flag: "data-dir") ?? settings.dataDirectory
        if let value = reader.string("IN_MEMORY", flag: "in-memory") {
            switch value.lowercased() {
            case "true", "1", "yes": settings.inMemory = true
            case "false", "0", "no": settings.inMemory = false
            default: throw Invalid(description: "IN_MEMORY must be true or false (got '\(value)')")
            }
        }
        if let value = reader.string("SQLITE_SYNCHRONOUS", flag: "sqlite-synchronous") {
            guard let synchronous = SQLiteStoreConfiguration.Synchronous(rawValue: value.uppercased()) else {
                throw Invalid(description: "SQLITE_SYNCHRONOUS (or --sqlite-synchronous) must be normal or full (got '\(value)')")
            }
            settings.sqliteSynchronous = synchronous
        }
        if let uri = reader.string("MONGODB_URI", flag: "mongodb-uri") {
            guard uri.hasPrefix("mongodb://") || uri.hasPrefix("mongodb+srv://") else {
                throw Invalid(description: "MONGODB_URI (or --mongodb-uri) must start with mongodb:// or mongodb+srv://")
            }
            var mongo = MongoStoreConfiguration(uri: uri)
            mongo.receiptOutboxCapacity = settings.receiptOutboxCapacity
            settings.mongo = mongo
        }
        // The development secret is public: it is only for a development node that runs embedded.
        if settings.jwtSecretIsDefault, settings.requiresSecret {
            let why = settings.environmentName == "production" ? "CHATD_ENV is production" : "a service (MongoDB, RabbitMQ or Redis) is configured"
            throw Invalid(
                description: "JWT_SECRET (or --jwt-secret) must be set, at least 32 random bytes, because \(why); the development secret is public and would let anyone mint tokens"
            )
        }
        return settings
    }

    /// The embedded SQLite file, for the store and the queue where no service is configured (none with
    /// ``inMemory``, or when every one is).
    public var sqlite: SQLiteStoreConfiguration? {
        guard !self.inMemory, self.mongo == nil || self.rabbitMQ == nil else { return nil }
        var configuration = SQLiteStoreConfiguration(directory: URL(fileURLWithPath: self.dataDirectory))
        configuration.synchronous = self.sqliteSynchronous
        configuration.queueTTL = self.queueTTL
        configuration.queueMaxLength = self.queueMaxLength
        configuration.receiptOutboxCapacity = self.receiptOutboxCapacity
        return configuration
    }

    /// Logs which mode and adapters these settings select, and what an operator should know about them.
    public func announce(to logger: Logger) {
        if self.isEmbedded, let sqlite = self.sqlite {
            logger.notice(
                "Embedded mode: no RabbitMQ, Redis or MongoDB configured; chats, messages and queued deliveries are kept in \(sqlite.path) and survive a restart or a crash"
            )
        } else if self.isEmbedded {
            logger.notice("Embedded mode, in memory (IN_MEMORY): messages live in this process's memory and are lost when it stops")
        } else if self.mongo == nil, self.sqlite == nil {
            logger.warning("The message store is in memory: chats and messages are lost when chatd stops although other services are configured; set MONGODB_URI")
        } else if self.mongo == nil, self.redis != nil, self.rabbitMQ != nil {
            logger.warning("The message store is this node's own SQLite file; several nodes need a shared store: set MONGODB_URI")
        }
        for line in self.summary { logger.info("Using \(line)") }
        if let sealer = self.sealer {
            let older = sealer.keyIDs.dropFirst()
            logger.notice(
                "Encryption at rest on: AES-256-GCM with key \(sealer.currentKeyID) for \(self.encryptionScope == .all ? "every chat" : "chats created with \"encrypted\": true")\(older.isEmpty ? "" : "; older keys kept for reading: \(older.joined(separator: ", "))")"
            )
        } else {
            logger.notice("Encryption at rest off: message content is stored and queued in the clear (set ENCRYPTION_KEY and ENCRYPTION_KEY_ID to seal it)")
        }
        if let webhook = self.receiptsWebhook, webhook.secret == nil {
            logger.warning("RECEIPTS_WEBHOOK_SECRET is not set: receipt batches are posted unsigned and the receiver cannot tell them from forgeries; set RECEIPTS_WEBHOOK_SECRET")
        }
        if self.jwtSecretIsDefault {
            logger.warning("JWT_SECRET is not set: tokens are signed with the public development secret (development mode only); set JWT_SECRET")
        }
    }

    /// Whether the public development secret is refused: in production, and whenever a service is configured.
    var requiresSecret: Bool { self.environmentName == "production" || !self.isEmbedded }

    /// The default cap on open HTTP connections: 10,000, or fewer when the process may open fewer files (it keeps
    /// 128 descriptors for the adapters and logs), so the cap is hit, and logged, before accept() starts failing.
    static var defaultMaxHTTPConnections: Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < 1_000_000_000 else { return 10_000 }
        return max(16, min(10_000, Int(limit.rlim_cur) - 128))
    }

    /// The token checks.
    public var tokens: TokenAuthenticator.Configuration {
        var configuration = TokenAuthenticator.Configuration(secret: self.jwtSecret)
        configuration.issuer = self.jwtIssuer
        configuration.audience = self.jwtAudience
        configuration.maxLifetime = self.jwtMaxTTL
        return configuration
    }

    /// The engine's configuration from these settings.
    var chatService: ChatServiceConfiguration {
        var configuration = ChatServiceConfiguration()
        configuration.nodeID = self.nodeID
        configuration.presenceHeartbeatInterval = self.presenceTTL / 3
        // A dead node is noticed within the TTL plus a third of it; its janitor has four TTLs before another may take over.
        configuration.janitorInterval = self.presenceTTL / 3
        configuration.janitorLease = self.presenceTTL * 4
        configuration.drainWindow = self.drainPrefetch
        configuration.retention = Double(self.queueTTL.components.seconds)
        configuration.deliveryConfirmation = .clientAcknowledgement(timeout: self.ackTimeout)
        configuration.sendRateLimit = self.sendRate
        configuration.fanOutRateLimit = self.fanOutRate
        configuration.maxChatParticipants = self.maxChatParticipants
        configuration.maxChatsPerUser = self.maxChatsPerUser
        configuration.requireChatAcceptance = self.requireChatAcceptance
        configuration.typingTTL = self.typingTTL
        configuration.encryption = self.sealer == nil ? nil : self.encryptionScope
        return configuration
    }

    /// The Socket.IO endpoint's configuration.
    var socketIO: SocketIOConfiguration {
        var configuration = SocketIOConfiguration()
        configuration.pingInterval = self.pingInterval
        configuration.pingTimeout = self.pingTimeout
        configuration.connectTimeout = self.connectTimeout
        configuration.maxSessionsPerAddress = self.maxSessionsPerAddress == 0 ? nil : self.maxSessionsPerAddress
        configuration.handshakeRatePerAddress = self.handshakeRate
        configuration.trustedProxies = Set(self.trustedProxies)
        configuration.maxConnectionsPerUser = self.maxConnectionsPerUser
        configuration.maxHTTPConnections = self.maxHTTPConnections
        configuration.httpIdleTimeout = self.httpIdleTimeout
        configuration.httpHeaderTimeout = self.httpHeaderTimeout
        // A store in this process's memory answers at once: a connection's sends one at a time cost least. A store
        // that writes (SQLite's commits, MongoDB's round trips) takes several of a connection's sends at once.
        if self.mongo == nil, self.sqlite == nil { configuration.maxSendsInFlight = 1 }
        return configuration
    }

    /// One line per backing service: which adapter, and where (never a password).
    public var summary: [String] {
        [
            self.mongo.map { "store: MongoDB at \(Self.redactedURI($0.uri))" }
                ?? self.sqlite.map { "store: SQLite at \($0.path) (synchronous \($0.synchronous.rawValue.lowercased()))" }
                ?? "store: in memory: chats and messages are lost when chatd stops (set MONGODB_URI for MongoDB)",
            self.rabbitMQ.map { "queue: RabbitMQ at \($0.host):\($0.port) as \($0.user)" }
                ?? self.sqlite.map { "queue: SQLite at \($0.path)" }
                ?? "queue: in memory (set RABBITMQ_HOST for RabbitMQ)",
            self.redis.map { "presence: Redis at \($0.host):\($0.port) db \($0.database), as node \(self.nodeID)" } ?? "presence: in memory (set REDIS_HOST for Redis)",
            self.receiptsWebhook.map { webhook in
                let outbox = self.mongo != nil ? "MongoDB" : self.sqlite != nil ? "the SQLite file" : "memory (lost on restart)"
                return "receipts webhook: \(ReceiptsWebhook.redacted(webhook.url)), outbox in \(outbox), at most \(self.receiptOutboxCapacity) events"
            } ?? "receipts webhook: off (set RECEIPTS_WEBHOOK_URL)",
        ]
    }

    /// Whether no service is configured: every adapter is in memory.
    public var isEmbedded: Bool { self.mongo == nil && self.rabbitMQ == nil && self.redis == nil }

    /// `mongodb://user:secret@host/db` → `mongodb://user:***@host/db`.
    static func redactedURI(_ uri: String) -> String {
        guard let schemeEnd = uri.range(of: "://"), let at = uri[schemeEnd.upperBound...].firstIndex(of: "@") else { return uri }
        let credentials = uri[schemeEnd.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return uri }
        return String(uri[..<colon]) + ":***" + String(uri[at...])
    }

    private struct Reader {
        var flags: [String: String]
        var environment: [String: String]

        func string(_ variable: String, flag: String) -> String? {
            if let value = self.flags[flag] { return value }
            guard let value = self.environment[variable], !value.isEmpty else { return nil }
            return value
        }

        /// A rate in units per second (0 turns the limit off) and its burst (default: three seconds' worth).
        func rate(_ variable: String, flag: String, burst burstVariable: String, burstFlag: String, default value: RateLimit?) throws(Invalid)
            -> RateLimit?
        {
            let rate = try self.int(variable, flag: flag, in: 0...100_000_000)
            let burst = try self.int(burstVariable, flag: burstFlag, in: 1...1_000_000_000)
            if rate == 0 { return nil }
            guard let rate else {
                return burst.map { RateLimit(rate: value?.rate ?? Double($0), burst: Double($0)) } ?? value
            }
            return RateLimit(rate: Double(rate), burst: Double(burst ?? max(1, rate * 3)))
        }

        func int(_ variable: String, flag: String, in range: ClosedRange<Int>) throws(Invalid) -> Int? {
            guard let raw = self.string(variable, flag: flag) else { return nil }
            guard let value = Int(raw.trimmingCharacters(in: .whitespaces)), range.contains(value) else {
                let source = self.flags[flag] != nil ? "--\(flag)" : variable
                throw Invalid(description: "\(source) must be a whole number from \(range.lowerBound) to \(range.upperBound) (got '\(raw)')")
            }
            return value
        }
    }
}
