/// Delivers events to connected clients.
///
/// `emit(_:to:acknowledgement:)` is synchronous on purpose: it places the event behind everything emitted to
/// that connection before and returns without waiting for the network, so the engine keeps per-recipient order
/// by the order of its calls, and many emits can be in flight at once. The client's acknowledgement, if asked
/// for, arrives through the ``Acknowledgement``.
public protocol Transport: Sendable {
    /// Queues `event` for `connection`.
    ///
    /// When `acknowledgement` is given, the transport asks the client to acknowledge the event and completes it
    /// when the client does, or fails it when the connection closes first.
    /// - Throws: ``ChatError`` ``ChatError/Code/connectionClosed`` when the connection is gone or its outbound
    ///   buffer is full.
    func emit(_ event: OutboundEvent, to connection: ConnectionID, acknowledgement: Acknowledgement?) throws

    /// Prepares `event` for being emitted to many connections: a transport that encodes events does it here, once,
    /// and `emit(_:to:acknowledgement:)` with a prepared event reuses the encoding for every connection.
    func prepare(_ event: OutboundEvent) -> PreparedEvent

    /// Queues a prepared event for `connection`, as `emit(_:to:acknowledgement:)` with the event does.
    /// - Throws: ``ChatError`` ``ChatError/Code/connectionClosed`` when the connection is gone or its outbound
    ///   buffer is full.
    func emit(_ event: PreparedEvent, to connection: ConnectionID, acknowledgement: Acknowledgement?) throws

    /// Closes `connection`, telling the client `reason`.
    func disconnect(_ connection: ConnectionID, reason: String) async

    /// Whether `connection`'s client has read most of what it was sent: false while the unread backlog is over
    /// what one read takes. A catch-up drain stops filling its window while this is false, so a slow reader gets
    /// everything, slowly, instead of overflowing its buffer. True for unknown or closed connections.
    func isWritable(_ connection: ConnectionID) -> Bool

    /// Returns once `connection` is writable again, or closed.
    func waitUntilWritable(_ connection: ConnectionID) async

    /// `joined` became participants of `chat` and `left` stopped being ones: a transport with chat rooms moves
    /// their connections in or out.
    func chatMembershipChanged(_ chat: ChatID, joined: [UserID], left: [UserID])
}

/// An event with the transport's own encoding of it, made once by ``Transport/prepare(_:)`` for all the
/// connections it goes to.
public struct PreparedEvent: Sendable {
    /// The event.
    public let event: OutboundEvent
    /// What the transport made of it (its wire text, say); nil for transports that encode nothing.
    public let encoded: (any Sendable)?

    /// Pairs `event` with the transport's encoding of it.
    public init(_ event: OutboundEvent, encoded: (any Sendable)? = nil) {
        self.event = event
        self.encoded = encoded
    }
}

extension Transport {
    /// Nothing prepared: for transports that do not encode events.
    public func prepare(_ event: OutboundEvent) -> PreparedEvent {
        PreparedEvent(event)
    }

    /// Emits the event itself: for transports that do not encode events.
    public func emit(_ event: PreparedEvent, to connection: ConnectionID, acknowledgement: Acknowledgement?) throws {
        try self.emit(event.event, to: connection, acknowledgement: acknowledgement)
    }

    /// Always writable: for transports that do not buffer.
    public func isWritable(_ connection: ConnectionID) -> Bool { true }

    /// Returns at once.
    public func waitUntilWritable(_ connection: ConnectionID) async {}

    /// Does nothing: for transports without rooms.
    public func chatMembershipChanged(_ chat: ChatID, joined: [UserID], left: [UserID]) {}

    /// Queues `event` for `connection`, asking for no acknowledgement.
    public func emit(_ event: OutboundEvent, to connection: ConnectionID) throws {
        try self.emit(event, to: connection, acknowledgement: nil)
    }
}
