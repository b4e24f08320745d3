public import ChatDomain

/// The settings of a ``SocketIOServer``; the defaults are Socket.IO's own.
public struct SocketIOConfiguration: Sendable {
    /// Where the endpoint is mounted. Default `/socket.io`.
    public var path: String = "/socket.io"
    /// How often the server pings each client. Default 25 s.
    public var pingInterval: Duration = .seconds(25)
    /// How long a client has to answer a ping before its session is closed. Default 20 s.
    public var pingTimeout: Duration = .seconds(20)
    /// The largest HTTP long-polling body or WebSocket message accepted, in bytes; a larger one closes that
    /// session. Default 1,000,000.
    public var maxPayload: Int = 1_000_000
    /// How long a new Engine.IO session may wait for its Socket.IO CONNECT before it is closed. Default 45 s.
    public var connectTimeout: Duration = .seconds(45)
    /// The most bytes queued for one client that has not read them yet; past this the client is too slow and
    /// its session is closed (its undelivered messages take the offline path). Default 8 MiB.
    public var maxBufferedBytes: Int = 8 * 1024 * 1024
    /// The most sessions this server holds at once; a handshake past this gets HTTP 503. Default 100,000.
    public var maxSessions: Int = 100_000
    /// The most open sessions one client address may hold; a handshake past this gets HTTP 429. Nil (the default)
    /// for no limit: set it once ``trustedProxies`` names any proxy in front of the server, or every client shares
    /// the proxy's address. `chatd` sets 100.
    public var maxSessionsPerAddress: Int?
    /// How fast one client address may open sessions; a handshake over it gets HTTP 429 with `Retry-After`. Nil
    /// (the default) for no limit; `chatd` sets 10 a second with bursts of 50.
    public var handshakeRatePerAddress: RateLimit?
    /// Proxies whose `X-Forwarded-For` names the client (IP addresses as written, e.g. `10.0.0.5`, `::1`). A
    /// request from any other peer is attributed to the peer itself, whatever its headers say. Default none.
    public var trustedProxies: Set<String> = []
    /// The most Socket.IO connections one user may hold on this server; one more gets `CONNECT_ERROR`
    /// `too_many_connections`. Default 20.
    public var maxConnectionsPerUser: Int = 20
    /// The most open HTTP connections (polling and WebSocket alike); a connection past this is closed at once and
    /// logged. Default 10,000.
    public var maxHTTPConnections: Int = 10_000
    /// How long a keep-alive HTTP connection may sit idle between requests. Default 60 s.
    public var httpIdleTimeout: Duration = .seconds(60)
    /// How long a new connection has to send its first complete request head; a half-sent head is closed after
    /// this. Default 10 s.
    public var httpHeaderTimeout: Duration = .seconds(10)

    /// How many `message:send`s of one connection may be in flight at once. The next one starts as soon as the
    /// one before has its place in the order (its message id), without waiting for its store write, so a busy
    /// connection's writes share the store's commits; past this many the server reads nothing more from that
    /// connection until one is answered. Messages keep the order they were sent in; their acknowledgements may
    /// come in another order (each carries its ack id, and the message's `clientMessageId`). Default 16.
    public var maxSendsInFlight: Int = 16

    /// The defaults.
    public init() {}

    /// Checks the settings; the error names the setting that is wrong.
    public func validate() throws(SocketIOConfigurationError) {
        guard self.path.hasPrefix("/") else { throw .init("path must start with '/' (got '\(self.path)')") }
        guard self.pingInterval > .zero else { throw .init("pingInterval must be positive") }
        guard self.pingTimeout > .zero else { throw .init("pingTimeout must be positive") }
        guard self.maxPayload >= 1024 else { throw .init("maxPayload must be at least 1024 bytes (got \(self.maxPayload))") }
        guard self.maxBufferedBytes >= self.maxPayload else {
            throw .init("maxBufferedBytes (\(self.maxBufferedBytes)) must be at least maxPayload (\(self.maxPayload))")
        }
        guard self.maxSessions >= 1 else { throw .init("maxSessions must be at least 1") }
        guard self.connectTimeout > .zero else { throw .init("connectTimeout must be positive") }
        if let perAddress = self.maxSessionsPerAddress, perAddress < 1 {
            throw .init("maxSessionsPerAddress must be at least 1, or nil for no limit")
        }
        if let rate = self.handshakeRatePerAddress {
            guard rate.rate > 0, rate.burst >= 1 else { throw .init("handshakeRatePerAddress needs a positive rate and a burst of at least 1") }
        }
        guard self.maxSendsInFlight >= 1 else { throw .init("maxSendsInFlight must be at least 1 (got \(self.maxSendsInFlight))") }
        guard self.maxConnectionsPerUser >= 1 else { throw .init("maxConnectionsPerUser must be at least 1") }
        guard self.maxHTTPConnections >= 1 else { throw .init("maxHTTPConnections must be at least 1") }
        guard self.httpIdleTimeout > .zero, self.httpHeaderTimeout > .zero else {
            throw .init("httpIdleTimeout and httpHeaderTimeout must be positive")
        }
    }
}

/// A ``SocketIOConfiguration`` setting is out of range; the message names it.
public struct SocketIOConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong.
    public var message: String
    init(_ message: String) { self.message = message }
    public var description: String { self.message }
}
