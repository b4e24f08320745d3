import ArgumentParser
import ChatBrokerAMQP
import ChatDomain
import ChatPresenceRedis
import ChatStoreMongo
import ChatTransport
import Foundation
import Logging

/// chatd's settings: each from its command-line flag, else its environment variable, else the product's default.
/// A service (RabbitMQ, Redis, MongoDB) is used only when its host or URI is set; otherwise its in-memory adapter is.
struct Settings: Sendable {
    /// The development secret used when `JWT_SECRET` is not set (chatd warns about it at startup).
    static let developmentSecret = "chatd-development-secret-do-not-use-in-production"

    var host = "127.0.0.1"
    var port = 3000
    var logLevel = Logger.Level.info
    var jwtSecret = Settings.developmentSecret
    var jwtSecretIsDefault = true
    var nodeID = NodeID(ProcessInfo.processInfo.hostName)
    var rabbitMQ: AMQPQueueConfiguration?
    var redis: RedisPresenceConfiguration?
    var mongo: MongoStoreConfiguration?
    var queueTTL: Duration = .seconds(24 * 60 * 60)
    var queueMaxLength = 100_000
    var drainPrefetch = 64
    var pingInterval: Duration = .seconds(25)
    var pingTimeout: Duration = .seconds(20)
    var ackTimeout: Duration = .seconds(10)

    /// A setting has a value chatd cannot use; the message names the variable or flag.
    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    /// Resolves the settings from `flags` over `environment`.
    static func resolve(_ flags: ConfigurationFlags, environment: [String: String]) throws(Invalid) -> Settings {
        let reader = Reader(flags: flags.values, environment: environment)
        var settings = Settings()
        settings.host = reader.string("HOST", flag: "host") ?? settings.host
        settings.port = try reader.int("PORT", flag: "port", in: 0...65535) ?? settings.port
        if let level = reader.string("LOG_LEVEL", flag: "log-level") {
            guard let parsed = Logger.Level(rawValue: level.lowercased()) else {
                throw Invalid(description: "LOG_LEVEL (or --log-level) must be one of trace, debug, info, notice, warning, error, critical (got '\(level)')")
            }
            settings.logLevel = parsed
        }
        if let secret = reader.string("JWT_SECRET", flag: "jwt-secret") {
            guard secret.utf8.count >= 32 else {
                throw Invalid(description: "JWT_SECRET (or --jwt-secret) must be at least 32 bytes long (got \(secret.utf8.count))")
            }
            settings.jwtSecret = secret
            settings.jwtSecretIsDefault = false
        }
        if let node = reader.string("NODE_ID", flag: "node-id") { settings.nodeID = NodeID(node) }
        if let ttl = try reader.int("QUEUE_TTL_SECONDS", flag: "queue-ttl-seconds", in: 1...(365 * 24 * 3600)) {
            settings.queueTTL = .seconds(ttl)
        }
        settings.queueMaxLength = try reader.int("QUEUE_MAX_LENGTH", flag: "queue-max-length", in: 1...100_000_000) ?? settings.queueMaxLength
        settings.drainPrefetch = try reader.int("QUEUE_PREFETCH", flag: "queue-prefetch", in: 1...65535) ?? settings.drainPrefetch
        if let ms = try reader.int("PING_INTERVAL_MS", flag: "ping-interval-ms", in: 50...3_600_000) { settings.pingInterval = .milliseconds(ms) }
        if let ms = try reader.int("PING_TIMEOUT_MS", flag: "ping-timeout-ms", in: 50...3_600_000) { settings.pingTimeout = .milliseconds(ms) }
        if let ms = try reader.int("ACK_TIMEOUT_MS", flag: "ack-timeout-ms", in: 10...3_600_000) { settings.ackTimeout = .milliseconds(ms) }

        if let host = reader.string("RABBITMQ_HOST", flag: "rabbitmq-host") {
            var amqp = AMQPQueueConfiguration()
            amqp.host = host
            amqp.port = try reader.int("RABBITMQ_PORT", flag: "rabbitmq-port", in: 1...65535) ?? amqp.port
            amqp.user = reader.string("RABBITMQ_USER", flag: "rabbitmq-user") ?? amqp.user
            amqp.password = reader.string("RABBITMQ_PASSWORD", flag: "rabbitmq-password") ?? amqp.password
            amqp.virtualHost = reader.string("RABBITMQ_VHOST", flag: "rabbitmq-vhost") ?? amqp.virtualHost
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
            settings.redis = redis
        }
        if let uri = reader.string("MONGODB_URI", flag: "mongodb-uri") {
            guard uri.hasPrefix("mongodb://") || uri.hasPrefix("mongodb+srv://") else {
                throw Invalid(description: "MONGODB_URI (or --mongodb-uri) must start with mongodb:// or mongodb+srv://")
            }
            settings.mongo = MongoStoreConfiguration(uri: uri)
        }
        return settings
    }

    /// The engine's configuration from these settings.
    var chatService: ChatServiceConfiguration {
        var configuration = ChatServiceConfiguration()
        configuration.nodeID = self.nodeID
        configuration.drainWindow = self.drainPrefetch
        configuration.retention = Double(self.queueTTL.components.seconds)
        configuration.deliveryConfirmation = .clientAcknowledgement(timeout: self.ackTimeout)
        return configuration
    }

    /// The Socket.IO endpoint's configuration.
    var socketIO: SocketIOConfiguration {
        var configuration = SocketIOConfiguration()
        configuration.pingInterval = self.pingInterval
        configuration.pingTimeout = self.pingTimeout
        return configuration
    }

    /// One line per backing service: which adapter, and where (never a password).
    var summary: [String] {
        [
            self.mongo.map { "store: MongoDB at \(Self.redactedURI($0.uri))" } ?? "store: in memory (set MONGODB_URI for MongoDB)",
            self.rabbitMQ.map { "queue: RabbitMQ at \($0.host):\($0.port) as \($0.user)" } ?? "queue: in memory (set RABBITMQ_HOST for RabbitMQ)",
            self.redis.map { "presence: Redis at \($0.host):\($0.port) db \($0.database)" } ?? "presence: in memory (set REDIS_HOST for Redis)",
        ]
    }

    var isEmbedded: Bool { self.mongo == nil && self.rabbitMQ == nil && self.redis == nil }

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

/// The flags that mirror the environment variables; each overrides its variable.
struct ConfigurationFlags: ParsableArguments {
    @Option(help: "Address to listen on (HOST; default 127.0.0.1).") var host: String?
    @Option(help: "Port to listen on (PORT; default 3000).") var port: String?
    @Option(help: "trace, debug, info, notice, warning, error or critical (LOG_LEVEL; default info).") var logLevel: String?
    @Option(help: "HS256 secret for access tokens, at least 32 bytes (JWT_SECRET).") var jwtSecret: String?
    @Option(help: "This node's id in the presence store (NODE_ID; default the host name).") var nodeId: String?
    @Option(help: "RabbitMQ host; set to use RabbitMQ (RABBITMQ_HOST).") var rabbitmqHost: String?
    @Option(help: "RabbitMQ port (RABBITMQ_PORT; default 5672).") var rabbitmqPort: String?
    @Option(help: "RabbitMQ user (RABBITMQ_USER; default guest).") var rabbitmqUser: String?
    @Option(help: "RabbitMQ password (RABBITMQ_PASSWORD; default guest).") var rabbitmqPassword: String?
    @Option(help: "RabbitMQ virtual host (RABBITMQ_VHOST; default /).") var rabbitmqVhost: String?
    @Option(help: "Redis host; set to use Redis (REDIS_HOST).") var redisHost: String?
    @Option(help: "Redis port (REDIS_PORT; default 6379).") var redisPort: String?
    @Option(help: "Redis password (REDIS_PASSWORD).") var redisPassword: String?
    @Option(help: "Redis database (REDIS_DB; default 0).") var redisDb: String?
    @Option(help: "MongoDB connection string; set to use MongoDB (MONGODB_URI).") var mongodbUri: String?
    @Option(help: "Offline queue TTL in seconds (QUEUE_TTL_SECONDS; default 86400).") var queueTtlSeconds: String?
    @Option(help: "Offline queue maximum length per user (QUEUE_MAX_LENGTH; default 100000).") var queueMaxLength: String?
    @Option(help: "Messages in flight to a reconnecting client (QUEUE_PREFETCH; default 64).") var queuePrefetch: String?
    @Option(help: "Engine.IO ping interval in ms (PING_INTERVAL_MS; default 25000).") var pingIntervalMs: String?
    @Option(help: "Engine.IO ping timeout in ms (PING_TIMEOUT_MS; default 20000).") var pingTimeoutMs: String?
    @Option(help: "How long a client has to acknowledge a message, in ms (ACK_TIMEOUT_MS; default 10000).") var ackTimeoutMs: String?

    var values: [String: String] {
        let pairs: [(String, String?)] = [
            ("host", self.host), ("port", self.port), ("log-level", self.logLevel), ("jwt-secret", self.jwtSecret),
            ("node-id", self.nodeId), ("rabbitmq-host", self.rabbitmqHost), ("rabbitmq-port", self.rabbitmqPort),
            ("rabbitmq-user", self.rabbitmqUser), ("rabbitmq-password", self.rabbitmqPassword),
            ("rabbitmq-vhost", self.rabbitmqVhost), ("redis-host", self.redisHost), ("redis-port", self.redisPort),
            ("redis-password", self.redisPassword), ("redis-db", self.redisDb), ("mongodb-uri", self.mongodbUri),
            ("queue-ttl-seconds", self.queueTtlSeconds), ("queue-max-length", self.queueMaxLength),
            ("queue-prefetch", self.queuePrefetch), ("ping-interval-ms", self.pingIntervalMs),
            ("ping-timeout-ms", self.pingTimeoutMs), ("ack-timeout-ms", self.ackTimeoutMs),
        ]
        return Dictionary(uniqueKeysWithValues: pairs.compactMap { key, value in value.map { (key, $0) } })
    }
}
