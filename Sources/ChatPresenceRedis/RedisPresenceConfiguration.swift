public import ChatAdapterSupport

/// Where the Redis server is and how the presence store uses it.
public struct RedisPresenceConfiguration: Sendable {
    /// The server's host name or address. Default `localhost` (the product's `REDIS_HOST`).
    public var host: String = "localhost"
    /// The server's port. Default 6379 (`REDIS_PORT`).
    public var port: Int = 6379
    /// The password for `AUTH`, if the server wants one (`REDIS_PASSWORD`). Never logged.
    public var password: String?
    /// The database index for `SELECT` (`REDIS_DB`). Default 0.
    public var database: Int = 0
    /// How long a node's connections stay online after its last heartbeat. Default 30 seconds.
    public var presenceTTL: Duration = .seconds(30)
    /// The limit on connecting. Default 1 second.
    public var connectTimeout: Duration = .seconds(1)
    /// The limit on one command's round trip. Default 2 seconds.
    public var commandTimeout: Duration = .seconds(2)
    /// The waits between reconnect attempts: 100 ms after the first failure, doubling up to 5 seconds.
    public var reconnectBackoff = ReconnectBackoff.Configuration(initial: .milliseconds(100), maximum: .seconds(5))
    /// The prefix of every key this store writes. Default `chatd:presence`.
    public var keyPrefix: String = "chatd:presence"

    /// The defaults.
    public init() {}

    /// Settings for `host` and `port`, other settings at their defaults.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
}

