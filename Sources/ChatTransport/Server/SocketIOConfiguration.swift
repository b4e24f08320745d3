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
    }
}

/// A ``SocketIOConfiguration`` setting is out of range; the message names it.
public struct SocketIOConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong.
    public var message: String
    init(_ message: String) { self.message = message }
    public var description: String { self.message }
}
