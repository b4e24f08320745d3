import Synchronization

/// A ``Transport`` that records what each connection received, for tests and demos.
///
/// Each connection has a ``Behavior`` that plays the client: acknowledge an event, ignore it (a frozen or
/// half-open client), or make its write fail. ``drop(_:)`` simulates the network going away.
public final class InMemoryTransport: Transport {
    /// What the simulated client does with one event.
    public enum Reply: Sendable {
        /// Receive it and acknowledge it if asked.
        case acknowledge
        /// Receive it and never acknowledge it.
        case ignore
        /// The write fails; the client never sees it.
        case failWrite
    }

    /// Decides the client's reply to each event sent to it.
    public typealias Behavior = @Sendable (OutboundEvent) -> Reply

    private struct Connection {
        var isOpen = true
        var events: [OutboundEvent] = []
        var unacknowledged: [Acknowledgement] = []
        var behavior: Behavior
        var closeReason: String?
    }

    private let state = Mutex<[ConnectionID: Connection]>([:])

    /// Creates a transport with no connections.
    public init() {}

    /// Opens `connection`; the client acknowledges everything unless `behavior` says otherwise.
    public func open(_ connection: ConnectionID, behavior: @escaping Behavior = { _ in .acknowledge }) {
        self.state.withLock { $0[connection] = Connection(behavior: behavior) }
    }

    /// Changes how the client of `connection` replies from now on.
    public func setBehavior(of connection: ConnectionID, _ behavior: @escaping Behavior) {
        self.state.withLock { $0[connection]?.behavior = behavior }
    }

    /// The network goes away: the connection closes and acknowledgements still outstanding fail.
    public func drop(_ connection: ConnectionID) {
        self.close(connection, reason: "transport close")
    }

    /// Every event written to `connection`, in order.
    public func events(of connection: ConnectionID) -> [OutboundEvent] {
        self.state.withLock { $0[connection]?.events ?? [] }
    }

    /// The `message:received` payloads written to `connection`, in order.
    public func receivedMessages(of connection: ConnectionID) -> [ReceivedMessage] {
        self.events(of: connection).compactMap { if case .messageReceived(let received) = $0 { received } else { nil } }
    }

    /// The client of `connection` acknowledges every event it has been ignoring so far; returns how many.
    @discardableResult
    public func acknowledgeIgnored(on connection: ConnectionID) -> Int {
        let held = self.state.withLock { connections -> [Acknowledgement] in
            defer { connections[connection]?.unacknowledged = [] }
            return connections[connection]?.unacknowledged ?? []
        }
        for acknowledgement in held { acknowledgement.succeed() }
        return held.count
    }

    /// How many events `connection` received and has not acknowledged.
    public func ignoredCount(on connection: ConnectionID) -> Int {
        self.state.withLock { $0[connection]?.unacknowledged.count { !$0.isCompleted } ?? 0 }
    }

    /// Whether `connection` is open.
    public func isOpen(_ connection: ConnectionID) -> Bool {
        self.state.withLock { $0[connection]?.isOpen ?? false }
    }

    /// The reason given when `connection` was closed by the server, if it was.
    public func closeReason(of connection: ConnectionID) -> String? {
        self.state.withLock { $0[connection]?.closeReason }
    }

    public func emit(_ event: OutboundEvent, to connection: ConnectionID, acknowledgement: Acknowledgement?) throws {
        guard let behavior = self.state.withLock({ $0[connection].flatMap { $0.isOpen ? $0.behavior : nil } }) else {
            throw ChatError(.connectionClosed, "connection \(connection) is closed")
        }
        // The behavior runs outside the lock: it is test code and may take locks of its own.
        let reply = behavior(event)
        let acknowledgeNow = try self.state.withLock { connections -> Bool in
            guard connections[connection]?.isOpen == true else {
                throw ChatError(.connectionClosed, "connection \(connection) is closed")
            }
            switch reply {
            case .failWrite:
                throw ChatError(.connectionClosed, "write to connection \(connection) failed")
            case .acknowledge:
                connections[connection]?.events.append(event)
                return true
            case .ignore:
                connections[connection]?.events.append(event)
                if let acknowledgement { connections[connection]?.unacknowledged.append(acknowledgement) }
                return false
            }
        }
        if acknowledgeNow { acknowledgement?.succeed() }
    }

    public func disconnect(_ connection: ConnectionID, reason: String) async {
        self.close(connection, reason: reason)
    }

    private func close(_ connection: ConnectionID, reason: String) {
        let outstanding = self.state.withLock { connections -> [Acknowledgement] in
            guard connections[connection]?.isOpen == true else { return [] }
            connections[connection]?.isOpen = false
            connections[connection]?.closeReason = reason
            defer { connections[connection]?.unacknowledged = [] }
            return connections[connection]?.unacknowledged ?? []
        }
        for acknowledgement in outstanding {
            acknowledgement.fail(ChatError(.connectionClosed, "connection \(connection) closed: \(reason)"))
        }
    }
}
