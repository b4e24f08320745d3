public import ChatAdapterSupport

/// Where RabbitMQ is and how the offline queues are shaped.
public struct AMQPQueueConfiguration: Sendable {
    /// The kind of per-user queue.
    public enum QueueType: String, Sendable {
        /// Classic durable queues (the default; a single node).
        case classic
        /// Quorum queues, replicated on a cluster.
        case quorum
    }

    /// Broker host (`RABBITMQ_HOST`). Default `localhost`.
    public var host: String = "localhost"
    /// Broker port (`RABBITMQ_PORT`). Default 5672.
    public var port: Int = 5672
    /// User (`RABBITMQ_USER`). Default `guest`.
    public var user: String = "guest"
    /// Password (`RABBITMQ_PASSWORD`). Default `guest`. Never logged.
    public var password: String = "guest"
    /// Virtual host. Default `/`.
    public var virtualHost: String = "/"
    /// How long an entry waits for its recipient before it is dead-lettered as expired. Default 24 hours.
    public var messageTTL: Duration = .seconds(24 * 60 * 60)
    /// The most entries a user's queue holds; further publishes are refused. Default 100,000.
    public var maxLength: Int = 100_000
    /// Classic (default) or quorum queues.
    public var queueType: QueueType = .classic
    /// The limit on connecting and logging in. Default 1 second.
    public var connectTimeout: Duration = .seconds(1)
    /// The limit on waiting for the broker to confirm a publish. Default 5 seconds.
    public var confirmTimeout: Duration = .seconds(5)
    /// The AMQP heartbeat. Default 30 seconds.
    public var heartbeat: Duration = .seconds(30)
    /// The waits between reconnect attempts: 100 ms after the first failure, doubling up to 5 seconds.
    public var reconnectBackoff = ReconnectBackoff.Configuration(initial: .milliseconds(100), maximum: .seconds(5))
    /// How often the dead-letter queue is read. Default 1 second.
    public var deadLetterPollInterval: Duration = .seconds(1)

    /// The defaults.
    public init() {}

    /// Settings for `host` and `port`, others at their defaults.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
}


/// The broker's names, as in the product's topology.
enum Topology {
    static let exchange = "offline_messages_exchange"
    static let deadLetterExchange = "offline_messages_dlx"
    static let deadLetterQueue = "offline_messages_dead"
    static let deliveryQueue = "message_delivery"

    static func queue(of user: String) -> String { "offline_messages.\(user)" }

    /// The direct exchange live messages for another node are published to, with the node id as routing key.
    static let routeExchange = "chatd.route"

    /// A node's inbox of live messages other nodes forwarded (``NodeRelay``).
    static func nodeQueue(of node: String) -> String { "chatd.node.\(node)" }
}
