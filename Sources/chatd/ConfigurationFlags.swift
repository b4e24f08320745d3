import ArgumentParser

/// The flags that mirror the environment variables; each overrides its variable.
struct ConfigurationFlags: ParsableArguments {
    @Option(help: "Address to listen on (HOST; default 127.0.0.1).") var host: String?
    @Option(help: "Port to listen on (PORT; default 3000; 0 picks a free port).") var port: String?
    @Option(help: "Write the port to this file once listening (PORT_FILE).") var portFile: String?
    @Option(help: "trace, debug, info, notice, warning, error or critical (LOG_LEVEL; default info).") var logLevel: String?
    @Option(help: "HS256 secret for access tokens, at least 32 bytes (JWT_SECRET).") var jwtSecret: String?
    @Option(help: "This node's id in the presence store (NODE_ID; default the host name and a random suffix).") var nodeId: String?
    @Option(help: "A node's connections count as online this many ms after its last heartbeat, sent every third of it (PRESENCE_TTL_MS; default 15000).") var presenceTtlMs: String?
    @Option(help: "RabbitMQ host; set to use RabbitMQ (RABBITMQ_HOST).") var rabbitmqHost: String?
    @Option(help: "RabbitMQ port (RABBITMQ_PORT; default 5672).") var rabbitmqPort: String?
    @Option(help: "RabbitMQ user (RABBITMQ_USER; default guest).") var rabbitmqUser: String?
    @Option(help: "RabbitMQ password (RABBITMQ_PASSWORD; default guest).") var rabbitmqPassword: String?
    @Option(help: "RabbitMQ virtual host (RABBITMQ_VHOST; default /).") var rabbitmqVhost: String?
    @Option(help: "Where chatd keeps what no configured service holds, in chatd.sqlite (DATA_DIR; default ./chatd-data).") var dataDir: String?
    @Flag(help: "Keep what no configured service holds in memory instead of DATA_DIR: lost when chatd stops (IN_MEMORY=true).") var inMemory = false
    @Option(help: "normal (a commit survives a crash of chatd) or full (a power loss too, slower) (SQLITE_SYNCHRONOUS; default normal).") var sqliteSynchronous: String?
    @Option(help: "RabbitMQ queue type, classic or quorum (RABBITMQ_QUEUE_TYPE; default classic; quorum on a cluster).") var rabbitmqQueueType: String?
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
    @Option(help: "development or production; production requires JWT_SECRET (CHATD_ENV; default development).") var env: String?
    @Option(help: "The iss every token must carry (JWT_ISSUER).") var jwtIssuer: String?
    @Option(help: "A value every token's aud must name (JWT_AUDIENCE).") var jwtAudience: String?
    @Option(help: "The longest token lifetime accepted, in seconds; 0 for no cap (JWT_MAX_TTL; default 86400).") var jwtMaxTtl: String?
    @Option(help: "How long a session may wait for its Socket.IO CONNECT, in ms (CONNECT_TIMEOUT_MS; default 45000).") var connectTimeoutMs: String?
    @Option(help: "Open Engine.IO sessions per client address; 0 for no limit (MAX_SESSIONS_PER_ADDRESS; default 100).") var maxSessionsPerAddress: String?
    @Option(help: "Handshakes per second per client address; 0 for no limit (HANDSHAKE_RATE_PER_ADDRESS; default 10).") var handshakeRatePerAddress: String?
    @Option(help: "Handshake burst per client address (HANDSHAKE_BURST_PER_ADDRESS; default 50).") var handshakeBurstPerAddress: String?
    @Option(help: "Comma-separated proxy addresses whose X-Forwarded-For is trusted (TRUSTED_PROXIES; default none).") var trustedProxies: String?
    @Option(help: "Open Socket.IO connections per user (MAX_CONNECTIONS_PER_USER; default 20).") var maxConnectionsPerUser: String?
    @Option(help: "Messages per second one user may send; 0 for no limit (SEND_RATE_PER_USER; default 20).") var sendRatePerUser: String?
    @Option(help: "Message burst per user (SEND_BURST_PER_USER; default 60).") var sendBurstPerUser: String?
    @Option(help: "Recipient deliveries per second one user's messages may cause; 0 for no limit (FANOUT_RATE_PER_USER; default 2000).") var fanoutRatePerUser: String?
    @Option(help: "Recipient delivery burst per user (FANOUT_BURST_PER_USER; default 10000).") var fanoutBurstPerUser: String?
    @Option(help: "The most participants a chat may have (MAX_CHAT_PARTICIPANTS; default 1000).") var maxChatParticipants: String?
    @Option(help: "The most chats a user may be in when creating one (MAX_CHATS_PER_USER; default 1000).") var maxChatsPerUser: String?
    @Option(help: "off, or required: people named in a chat must accept it before it reaches them (CHAT_ACCEPTANCE; default off).") var chatAcceptance: String?
    @Option(help: "Idle keep-alive HTTP connections close after this many ms (HTTP_IDLE_TIMEOUT_MS; default 60000).") var httpIdleTimeoutMs: String?
    @Option(help: "A connection must send its first request head within this many ms (HTTP_HEADER_TIMEOUT_MS; default 10000).") var httpHeaderTimeoutMs: String?
    @Option(help: "The most open HTTP connections (MAX_HTTP_CONNECTIONS; default 10000 or the file limit less 128).") var maxHttpConnections: String?
    @Option(help: "Base64 of the 32-byte AES-256-GCM key that seals message content at rest (ENCRYPTION_KEY).") var encryptionKey: String?
    @Option(help: "The id of ENCRYPTION_KEY, stored with each sealed value (ENCRYPTION_KEY_ID).") var encryptionKeyId: String?
    @Option(help: "Older keys for reading, id:base64 pairs separated by commas (ENCRYPTION_OLD_KEYS).") var encryptionOldKeys: String?
    @Option(help: "all (every chat) or flagged (chats created with encrypted: true) (ENCRYPTION_SCOPE; default all).") var encryptionScope: String?
    @Option(help: "A typing:start without a refresh ends after this many ms (TYPING_TTL_MS; default 6000).") var typingTtlMs: String?
    @Option(help: "POST receipt events (delivered, read, expired, failed) to this http(s) URL (RECEIPTS_WEBHOOK_URL).") var receiptsWebhookUrl: String?
    @Option(help: "Key of the batches' X-Chatd-Signature, HMAC-SHA256 (RECEIPTS_WEBHOOK_SECRET).") var receiptsWebhookSecret: String?
    @Option(help: "The most receipt events waiting for the webhook; past it the oldest are dropped (RECEIPTS_OUTBOX_MAX; default 100000).") var receiptsOutboxMax: String?

    var values: [String: String] {
        let pairs: [(String, String?)] = [
            ("host", self.host), ("port", self.port), ("port-file", self.portFile), ("log-level", self.logLevel), ("jwt-secret", self.jwtSecret),
            ("node-id", self.nodeId), ("presence-ttl-ms", self.presenceTtlMs), ("rabbitmq-host", self.rabbitmqHost), ("rabbitmq-port", self.rabbitmqPort),
            ("rabbitmq-user", self.rabbitmqUser), ("rabbitmq-password", self.rabbitmqPassword),
            ("rabbitmq-vhost", self.rabbitmqVhost), ("rabbitmq-queue-type", self.rabbitmqQueueType), ("data-dir", self.dataDir),
            ("in-memory", self.inMemory ? "true" : nil), ("sqlite-synchronous", self.sqliteSynchronous), ("redis-host", self.redisHost), ("redis-port", self.redisPort),
            ("redis-password", self.redisPassword), ("redis-db", self.redisDb), ("mongodb-uri", self.mongodbUri),
            ("queue-ttl-seconds", self.queueTtlSeconds), ("queue-max-length", self.queueMaxLength),
            ("queue-prefetch", self.queuePrefetch), ("ping-interval-ms", self.pingIntervalMs),
            ("ping-timeout-ms", self.pingTimeoutMs), ("ack-timeout-ms", self.ackTimeoutMs), ("env", self.env),
            ("jwt-issuer", self.jwtIssuer), ("jwt-audience", self.jwtAudience), ("jwt-max-ttl", self.jwtMaxTtl),
            ("connect-timeout-ms", self.connectTimeoutMs), ("max-sessions-per-address", self.maxSessionsPerAddress),
            ("handshake-rate-per-address", self.handshakeRatePerAddress), ("handshake-burst-per-address", self.handshakeBurstPerAddress),
            ("trusted-proxies", self.trustedProxies), ("max-connections-per-user", self.maxConnectionsPerUser),
            ("send-rate-per-user", self.sendRatePerUser), ("send-burst-per-user", self.sendBurstPerUser),
            ("fanout-rate-per-user", self.fanoutRatePerUser), ("fanout-burst-per-user", self.fanoutBurstPerUser),
            ("max-chat-participants", self.maxChatParticipants), ("max-chats-per-user", self.maxChatsPerUser),
            ("http-idle-timeout-ms", self.httpIdleTimeoutMs), ("http-header-timeout-ms", self.httpHeaderTimeoutMs),
            ("max-http-connections", self.maxHttpConnections), ("chat-acceptance", self.chatAcceptance),
            ("typing-ttl-ms", self.typingTtlMs), ("receipts-webhook-url", self.receiptsWebhookUrl),
            ("receipts-webhook-secret", self.receiptsWebhookSecret), ("receipts-outbox-max", self.receiptsOutboxMax),
            ("encryption-key", self.encryptionKey), ("encryption-key-id", self.encryptionKeyId),
            ("encryption-old-keys", self.encryptionOldKeys), ("encryption-scope", self.encryptionScope),
        ]
        return Dictionary(uniqueKeysWithValues: pairs.compactMap { key, value in value.map { (key, $0) } })
    }
}
