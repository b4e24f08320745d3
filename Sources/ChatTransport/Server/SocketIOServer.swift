public import ChatDomain
import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// A Socket.IO v5 server over Engine.IO v4 (long-polling, WebSocket and the upgrade between them) that stock
/// Socket.IO clients use unchanged, and the `Transport` of a `ChatService`.
///
/// Create it together with its `ChatService` (built with the server as its transport), mount it on a
/// Hummingbird router with ``addRoutes(to:)`` and run both as services (the server runs the ping timer):
///
/// ```swift
/// let server = try SocketIOServer(authenticator: authenticator, logger: logger) { transport in
///     try ChatService(configuration: .init(), dependencies: .init(..., transport: transport, ...), logger: logger)
/// }
/// let router = Router(context: ChatRequestContext.self)
/// server.addRoutes(to: router)
/// let app = Application(router: router, server: server.httpServer(router: router), services: [server.chatService, server])
/// ```
public final class SocketIOServer: Transport, Service, Sendable {
    /// The settings.
    public let configuration: SocketIOConfiguration
    let authenticator: TokenAuthenticator
    let logger: Logger
    private let registry: Mutex<Registry>
    private let engine = Mutex<ChatService?>(nil)
    let connectionGuard: ConnectionGuard
    /// The time sessions, pings and rate limits are measured in.
    let clock: any MonotonicClock
    /// Refusals of handshakes and connections logged at most once a second each, with a count of the rest.
    private let refusals = RefusalLog()

    struct Registry {
        /// False once the server shuts down: new handshakes are refused.
        var accepting = true
        var sessions: [String: EngineSession] = [:]
        /// Open sessions per client address (only addresses with at least one).
        var sessionsPerAddress: [String: Int] = [:]
        var handshakes: KeyedRateLimiter<String>?
        var connections: [ConnectionID: EngineSession] = [:]
        var users: [UserID: Set<ConnectionID>] = [:]
        var rooms: [String: Set<ConnectionID>] = [:]
        var memberships: [ConnectionID: Set<String>] = [:]
    }

    /// Creates a server and its engine: `makeEngine` builds the engine with this server as its transport, so the
    /// server never exists without the engine it hands client events to. `clock` measures pings, timeouts and
    /// rate limits (a `ManualMonotonicClock` lets tests move it).
    /// - Throws: ``SocketIOConfigurationError`` naming a setting that is out of range, or what `makeEngine` threw.
    public convenience init(
        configuration: SocketIOConfiguration = SocketIOConfiguration(),
        authenticator: TokenAuthenticator,
        logger: Logger,
        clock: any MonotonicClock = SystemMonotonicClock(),
        engine makeEngine: (SocketIOServer) throws -> ChatService
    ) throws {
        try self.init(configuration: configuration, authenticator: authenticator, logger: logger, clock: clock)
        let engine = try makeEngine(self)
        self.engine.withLock { $0 = engine }
    }

    private init(
        configuration: SocketIOConfiguration,
        authenticator: TokenAuthenticator,
        logger: Logger,
        clock: any MonotonicClock
    ) throws(SocketIOConfigurationError) {
        self.clock = clock
        try configuration.validate()
        self.configuration = configuration
        self.authenticator = authenticator
        self.logger = logger
        var registry = Registry()
        registry.handshakes = configuration.handshakeRatePerAddress.map { KeyedRateLimiter(limit: $0) }
        self.registry = Mutex(registry)
        self.connectionGuard = ConnectionGuard(
            maxConnections: configuration.maxHTTPConnections,
            headerTimeout: configuration.httpHeaderTimeout,
            logger: logger
        )
    }

    /// Logs a refusal of kind `key`, at most once a second; the line counts the refusals it stood for.
    func logRefusal(_ key: String, _ message: Logger.Message, metadata: Logger.Metadata) {
        guard let count = self.refusals.admit(key) else { return }
        var metadata = metadata
        metadata["socketio.refusals"] = "\(count)"
        self.logger.warning(message, metadata: metadata)
    }

    /// The engine this server hands client events to.
    public var chatService: ChatService {
        // Set by the only public initializer before it returns.
        self.engine.withLock { $0! }
    }

    /// How many Engine.IO sessions are open.
    public var sessionCount: Int { self.registry.withLock { $0.sessions.count } }

    /// How many authenticated Socket.IO connections are open.
    public var connectionCount: Int { self.registry.withLock { $0.connections.count } }

    // MARK: Service

    /// Runs the ping timer until graceful shutdown, then closes every session.
    public func run() async throws {
        // Fine enough that pings go out within 5 % of pingInterval and a silent client is closed within ~25 ms of
        // pingInterval + pingTimeout (the reference server's precision): at most 250 ms, at least 5 ms.
        let shortest = min(self.configuration.pingInterval, self.configuration.pingTimeout, self.configuration.connectTimeout)
        let tick = min(max(shortest / 40, .milliseconds(5)), .milliseconds(250))
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                self.timerTick()
                try? await self.clock.sleep(for: tick)
            }
        }
        let sessions = self.registry.withLock { registry in
            registry.accepting = false
            return Array(registry.sessions.values)
        }
        // Only the transport closes (no Socket.IO DISCONNECT), so clients reconnect by themselves.
        for session in sessions {
            self.closeSession(session, reason: "server shutting down", notifyClient: true)
        }
        self.logger.info("Socket.IO server stopped", metadata: ["socketio.sessions.closed": "\(sessions.count)"])
    }

    private func timerTick() {
        let now = self.clock.now()
        let sessions = self.registry.withLock { Array($0.sessions.values) }
        for session in sessions {
            switch session.timerAction(
                now: now,
                pingTimeout: self.configuration.pingTimeout,
                connectTimeout: self.configuration.connectTimeout
            ) {
            case .none:
                break
            case .ping:
                do {
                    try session.enqueue(EngineIOPacket(.ping).encoded)
                } catch {
                    self.closeSession(session, reason: "outbound buffer full", notifyClient: false)
                }
            case .close(let reason):
                self.closeSession(session, reason: reason, notifyClient: true)
            }
        }
    }

    // MARK: Transport

    /// Queues `event` for `connection`, with a Socket.IO acknowledgement id when `acknowledgement` is given.
    /// - Throws: `ChatError` `connection_closed` when the connection is gone or is not reading (its
    ///   buffer reached ``SocketIOConfiguration/maxBufferedBytes``; the connection is then closed).
    public func emit(_ event: OutboundEvent, to connection: ConnectionID, acknowledgement: Acknowledgement?) throws {
        try self.enqueue(Self.encodeEvent(event), on: self.requireSession(of: connection), acknowledgement: acknowledgement)
    }

    /// Encodes `event` once, for every connection it is emitted to. An event that cannot be encoded is prepared
    /// without its text; emitting it then fails as `emit(_:to:acknowledgement:)` with the event does.
    public func prepare(_ event: OutboundEvent) -> PreparedEvent {
        PreparedEvent(event, encoded: try? Self.encodeEvent(event))
    }

    /// Queues a prepared event for `connection`, with its text as ``prepare(_:)`` encoded it.
    /// - Throws: `ChatError` `connection_closed` as `emit(_:to:acknowledgement:)` with the event does.
    public func emit(_ event: PreparedEvent, to connection: ConnectionID, acknowledgement: Acknowledgement?) throws {
        let session = try self.requireSession(of: connection)
        let text = try (event.encoded as? String) ?? Self.encodeEvent(event.event)
        try self.enqueue(text, on: session, acknowledgement: acknowledgement)
    }

    /// The session `connection` is open on.
    /// - Throws: `ChatError` `connection_closed` when it is not open (any more).
    private func requireSession(of connection: ConnectionID) throws(ChatError) -> EngineSession {
        guard let session = self.session(of: connection) else {
            throw ChatError(.connectionClosed, "connection \(connection) is not open")
        }
        return session
    }

    /// Queues an encoded event on `session`; a session whose buffer is full is closed.
    private func enqueue(_ text: String, on session: EngineSession, acknowledgement: Acknowledgement?) throws(ChatError) {
        do {
            try session.enqueueEvent(text, acknowledgement: acknowledgement)
        } catch {
            if !session.isClosed {
                self.closeSession(session, reason: "client too slow: outbound buffer full", notifyClient: false)
            }
            throw error
        }
    }

    /// Closes `connection`: the client gets a Socket.IO DISCONNECT, then the session ends with `reason`.
    public func disconnect(_ connection: ConnectionID, reason: String) async {
        guard let session = self.session(of: connection) else { return }
        try? session.enqueue(EngineIOPacket(.message, SocketIOPacket(.disconnect).encoded).encoded)
        self.closeSession(session, reason: reason, notifyClient: true)
    }

    /// The session that holds `connection`.
    func session(of connection: ConnectionID) -> EngineSession? {
        self.registry.withLock { $0.connections[connection] }
    }

    /// Whether `connection`'s client has read most of what it was sent (see `Transport`).
    public func isWritable(_ connection: ConnectionID) -> Bool {
        self.session(of: connection)?.isWritable ?? true
    }

    /// Returns once `connection`'s backlog is down to what one read takes, or it closed.
    public func waitUntilWritable(_ connection: ConnectionID) async {
        await self.registry.withLock { $0.connections[connection] }?.waitUntilWritable()
    }

    /// Queues `event` for every open connection of `user`; returns how many it was queued for.
    @discardableResult
    public func emit(_ event: OutboundEvent, toUser user: UserID) -> Int {
        let connections = self.registry.withLock { $0.users[user] ?? [] }
        return self.emit(event, toEach: connections)
    }

    /// Queues `event` for every connection in `room` (chat rooms are named ``room(of:)``); returns how many.
    @discardableResult
    public func emit(_ event: OutboundEvent, toRoom room: String) -> Int {
        let connections = self.registry.withLock { $0.rooms[room] ?? [] }
        return self.emit(event, toEach: connections)
    }

    private func emit(_ event: OutboundEvent, toEach connections: Set<ConnectionID>) -> Int {
        // Encoded once for all of them.
        guard !connections.isEmpty, let text = try? Self.encodeEvent(event) else { return 0 }
        let sessions = self.registry.withLock { registry in connections.compactMap { registry.connections[$0] } }
        var count = 0
        for session in sessions where (try? self.enqueue(text, on: session, acknowledgement: nil)) != nil {
            count += 1
        }
        return count
    }

    /// The room of a chat; a user's connections join the rooms of their chats when they connect.
    public static func room(of chat: ChatID) -> String { "chat:\(chat)" }

    /// Adds `connection` to `room`.
    public func join(_ connection: ConnectionID, room: String) {
        self.registry.withLock { registry in
            guard registry.connections[connection] != nil else { return }
            registry.rooms[room, default: []].insert(connection)
            registry.memberships[connection, default: []].insert(room)
        }
    }

    /// Adds every open connection of `user` to `room` (for a chat created while they are connected).
    public func join(user: UserID, room: String) {
        let connections = self.registry.withLock { $0.users[user] ?? [] }
        for connection in connections { self.join(connection, room: room) }
    }

    /// Removes every open connection of `user` from `room` (they left the chat).
    public func leave(user: UserID, room: String) {
        let connections = self.registry.withLock { $0.users[user] ?? [] }
        for connection in connections { self.leave(connection, room: room) }
    }

    /// Moves the connections of `joined` into the chat's room and those of `left` out of it.
    public func chatMembershipChanged(_ chat: ChatID, joined: [UserID], left: [UserID]) {
        let room = Self.room(of: chat)
        for user in joined { self.join(user: user, room: room) }
        for user in left { self.leave(user: user, room: room) }
    }

    /// Removes `connection` from `room`.
    public func leave(_ connection: ConnectionID, room: String) {
        self.registry.withLock { registry in
            registry.rooms[room]?.remove(connection)
            if registry.rooms[room]?.isEmpty == true { registry.rooms[room] = nil }
            registry.memberships[connection]?.remove(room)
        }
    }

    /// The connections in `room`.
    public func members(of room: String) -> Set<ConnectionID> {
        self.registry.withLock { $0.rooms[room] ?? [] }
    }

    /// `["<name>",<payload>]`, the argument list of the event's Socket.IO EVENT packet.
    static func encodeEvent(_ event: OutboundEvent) throws(ChatError) -> String {
        try WireEncoder.event(event)
    }

    // MARK: Sessions

    /// Why a handshake was refused.
    enum HandshakeRefusal: Error, CustomStringConvertible {
        /// The server holds ``SocketIOConfiguration/maxSessions``, or is shutting down.
        case serverFull
        /// The address holds ``SocketIOConfiguration/maxSessionsPerAddress``.
        case tooManySessions
        /// The address is over ``SocketIOConfiguration/handshakeRatePerAddress``; retry after this many seconds.
        case handshakeRate(Double)

        var description: String {
            switch self {
            case .serverFull: "the server holds its maximum number of sessions"
            case .tooManySessions: "your address holds its maximum number of sessions"
            case .handshakeRate: "too many handshakes from your address; retry later"
            }
        }
    }

    /// Opens a session for a client at `address`, within the server's and the address's limits.
    func openSession(transport: EngineSession.TransportKind, bearerToken: String?, address: String? = nil) -> Result<EngineSession, HandshakeRefusal> {
        let session = EngineSession(
            id: Self.randomID(),
            transport: transport,
            bearerToken: bearerToken,
            address: address,
            pingInterval: self.configuration.pingInterval,
            maxBufferedBytes: self.configuration.maxBufferedBytes,
            maxReadBytes: self.configuration.maxPayload,
            maxSendsInFlight: self.configuration.maxSendsInFlight,
            clock: self.clock
        )
        let elapsed = self.clock.now()
        let now = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let refusal: HandshakeRefusal? = self.registry.withLock { registry in
            guard registry.accepting, registry.sessions.count < self.configuration.maxSessions else { return .serverFull }
            if let address {
                if let limit = self.configuration.maxSessionsPerAddress, registry.sessionsPerAddress[address, default: 0] >= limit {
                    return .tooManySessions
                }
                if let wait = registry.handshakes?.take(address, now: now) { return .handshakeRate(wait) }
                registry.sessionsPerAddress[address, default: 0] += 1
            }
            registry.sessions[session.id] = session
            return nil
        }
        if let refusal {
            self.logRefusal(
                "handshake",
                "Engine.IO handshake refused",
                metadata: ["socketio.refusal": "\(refusal)", "net.peer.address": "\(LogSafe.value(address ?? "-"))"]
            )
            return .failure(refusal)
        }
        try? session.enqueue(EngineIOPacket(.open, self.openPayload(session, upgrades: transport == .polling)).encoded)
        self.logger.debug("Engine.IO session opened", metadata: ["engineio.transport": "\(transport)"])
        return .success(session)
    }

    func session(_ id: String) -> EngineSession? {
        self.registry.withLock { $0.sessions[id] }
    }

    private func openPayload(_ session: EngineSession, upgrades: Bool) -> String {
        let ping = self.configuration.pingInterval.wholeMilliseconds
        let timeout = self.configuration.pingTimeout.wholeMilliseconds
        let upgradeList = upgrades ? "[\"websocket\"]" : "[]"
        return "{\"sid\":\"\(session.id)\",\"upgrades\":\(upgradeList),\"pingInterval\":\(ping),"
            + "\"pingTimeout\":\(timeout),\"maxPayload\":\(self.configuration.maxPayload)}"
    }

    /// Closes `session` once: fails its pending acknowledgements, forgets it, and tells the engine its connection
    /// is gone. With `notifyClient` an Engine.IO CLOSE is queued first (a polling client reads it on its next GET).
    func closeSession(_ session: EngineSession, reason: String, notifyClient: Bool) {
        if notifyClient, session.transport == .polling {
            try? session.enqueue(EngineIOPacket(.close).encoded)
        }
        let (closed, socket) = session.close(reason: reason)
        guard closed else { return }
        self.registry.withLock { registry in
            registry.sessions[session.id] = nil
            if let address = session.address, let count = registry.sessionsPerAddress[address] {
                registry.sessionsPerAddress[address] = count > 1 ? count - 1 : nil
            }
            if let socket { Self.forget(socket, in: &registry) }
        }
        // Never the Engine.IO sid: over long-polling it is the session's only credential.
        let metadata: Logger.Metadata = [
            "engineio.reason": "\(reason)", "chat.connection.id": "\(socket.map { "\($0.connection)" } ?? "-")",
        ]
        if reason == "client closed" || reason == "server shutting down" {
            self.logger.debug("Engine.IO session closed", metadata: metadata)
        } else {
            self.logger.notice("Engine.IO session closed", metadata: metadata)
        }
        if let socket, socket.engineKnows {
            let service = self.chatService
            Task { await service.disconnect(socket.connection) }
        }
    }

    private static func forget(_ socket: EngineSession.Socket, in registry: inout Registry) {
        registry.connections[socket.connection] = nil
        registry.users[socket.user.id]?.remove(socket.connection)
        if registry.users[socket.user.id]?.isEmpty == true { registry.users[socket.user.id] = nil }
        for room in registry.memberships.removeValue(forKey: socket.connection) ?? [] {
            registry.rooms[room]?.remove(socket.connection)
            if registry.rooms[room]?.isEmpty == true { registry.rooms[room] = nil }
        }
    }

    /// Registers an authenticated connection; false when its user holds
    /// ``SocketIOConfiguration/maxConnectionsPerUser`` already.
    func register(_ socket: EngineSession.Socket, session: EngineSession) -> Bool {
        self.registry.withLock { registry in
            guard registry.users[socket.user.id, default: []].count < self.configuration.maxConnectionsPerUser else { return false }
            registry.connections[socket.connection] = session
            registry.users[socket.user.id, default: []].insert(socket.connection)
            return true
        }
    }

    func unregister(_ socket: EngineSession.Socket) {
        self.registry.withLock { Self.forget(socket, in: &$0) }
    }

    /// 20 random URL-safe characters (120 bits).
    static func randomID() -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        var generator = SystemRandomNumberGenerator()
        return String((0..<20).map { _ in alphabet[Int(generator.next() % 64)] })
    }
}
