import ChatDomain
import DequeModule
import Synchronization

/// One Engine.IO session: its outbound buffer, its transport, its ping state and the Socket.IO socket on it.
///
/// Everything a client is sent goes through ``enqueue(_:)`` (synchronous, so the engine's emit order is the wire
/// order) and leaves through ``take(maxBytes:)``, which a long-polling GET awaits, or, over WebSocket, through a
/// writer on the connection's event loop, woken when there is something to write (``useWriter(_:)``).
final class EngineSession: Sendable {
    enum TransportKind: String, Sendable {
        case polling
        case websocket
    }

    /// The Socket.IO socket opened on this session by an authenticated CONNECT.
    struct Socket: Sendable {
        let connection: ConnectionID
        let user: User
        var pendingAcks: [UInt64: Acknowledgement] = [:]
        /// When ``pendingAcks`` reaches this size, acknowledgements that completed without a client ACK (timed out,
        /// failed) are swept out; then it doubles from what is left, so the sweep costs O(1) per emit.
        var sweepAcksAt = 64
        var nextAckID: UInt64 = 0
        /// Whether `ChatService.connect` has returned for this socket, so a close must be told to the engine.
        var engineKnows = false
        /// Events emitted before the CONNECT reply went out, held so the client sees the reply first.
        var held: [String] = []
        var heldBytes = 0
        var announced = false
    }

    /// What the ping timer should do for this session now.
    enum TimerAction: Equatable {
        case none
        case ping
        case close(String)
    }

    private struct State {
        var transport: TransportKind
        var upgrading = false
        var outbound: Deque<String> = []
        var outboundBytes = 0
        var waiter: CheckedContinuation<[String]?, Never>?
        var pollInProgress = false
        var closeReason: String?
        var pingSentAt: Duration?
        var nextPingAt: Duration
        /// When the session last had no socket (its start, or the socket's DISCONNECT).
        var socketlessSince: Duration?
        var socket: Socket?
        var reconnectRunning = false
        /// Drains waiting for the client to read its backlog down (see ``waitUntilWritable()``).
        var writableWaiters: [CheckedContinuation<Void, Never>] = []
        var writer: WriterState = .none
        var writerFinishedWaiters: [CheckedContinuation<Void, Never>] = []
    }

    /// Where the WebSocket writer is (see ``useWriter(_:)``). It runs on the connection's event loop when woken,
    /// takes what is buffered, writes it and stops; nothing runs for an idle WebSocket.
    enum WriterState {
        /// No writer: packets wait for a long-polling GET (or for a WebSocket's writer to be set).
        case none
        /// Nothing to write: the next packet wakes the writer with `wake`.
        case idle(wake: @Sendable () -> Void)
        /// A wake is on its way: the writer will take everything buffered by the time it runs.
        case woken(wake: @Sendable () -> Void)
        /// The socket's send buffer is full: the writer goes on when it drains (the connection says so), or when
        /// the session closes. Packets meanwhile stay in the session's buffer, within its bound.
        case blocked(wake: @Sendable () -> Void)
        /// The WebSocket close is being sent; the task sending it, once the writer started it.
        case closing(Task<Void, Never>?)
        /// The WebSocket was closed, or given up on: nothing more leaves this session.
        case finished
    }

    /// What the WebSocket writer does next (see ``nextWrite(socketWritable:)``).
    enum WriterStep: Equatable {
        /// Write these packets, then ask again.
        case write([String])
        /// Nothing to do now: the writer stops (the next packet, or the socket draining, wakes it).
        case stop
        /// The session is closed and everything was written: close the WebSocket (with the reason), then report
        /// ``writerFinished()``.
        case close(String)
    }

    /// The Engine.IO session id. Over long-polling it is the session's only credential, so it is never logged.
    let id: String
    /// A random tag that names the session in log lines instead of its id.
    let logID = String(SocketIOServer.randomID().prefix(8))
    /// The token from an `Authorization: Bearer` header on the handshake, used when CONNECT carries none.
    let bearerToken: String?
    /// The client's address, when known (for the per-address session limit).
    let address: String?
    private let maxBufferedBytes: Int
    /// The places for this session's sends in flight.
    let sends: SendWindow
    /// The unread backlog above which the session counts as not writable: what one poll takes, at most half the
    /// buffer.
    private let writableThreshold: Int
    private let state: Mutex<State>
    /// The server's clock: every time the session keeps is a reading of it.
    private let clock: any MonotonicClock

    init(
        id: String,
        transport: TransportKind,
        bearerToken: String?,
        address: String? = nil,
        pingInterval: Duration,
        maxBufferedBytes: Int,
        maxReadBytes: Int = 1_000_000,
        maxSendsInFlight: Int = 1,
        clock: any MonotonicClock
    ) {
        self.clock = clock
        self.sends = SendWindow(size: maxSendsInFlight)
        self.id = id
        self.bearerToken = bearerToken
        self.address = address
        self.maxBufferedBytes = maxBufferedBytes
        self.writableThreshold = min(maxReadBytes, maxBufferedBytes / 2)
        let now = clock.now()
        self.state = Mutex(State(transport: transport, nextPingAt: now + pingInterval, socketlessSince: now))
    }

    var transport: TransportKind { self.state.withLock { $0.transport } }
    var isClosed: Bool { self.state.withLock { $0.closeReason != nil } }

    /// Whether a long-polling GET is waiting for packets.
    var hasWaitingPoll: Bool { self.state.withLock { $0.waiter != nil } }
    var socket: Socket? { self.state.withLock { $0.socket } }
    /// Whether a Socket.IO socket is open on the session (cheaper than copying it out).
    var hasSocket: Bool { self.state.withLock { $0.socket != nil } }

    // MARK: Outbound

    /// Queues one encoded Engine.IO packet.
    /// - Throws: `connection_closed` when the session is closed or its buffer is full (the caller closes it).
    func enqueue(_ packet: String) throws(ChatError) {
        try self.state.withLock { state throws(ChatError) in try Self.enqueue(packet, into: &state, limit: self.maxBufferedBytes) }
    }

    private static func enqueue(_ packet: String, into state: inout State, limit: Int) throws(ChatError) {
        guard state.closeReason == nil else { throw ChatError(.connectionClosed, "the connection is closed") }
        let size = packet.utf8.count
        guard state.outboundBytes + size <= limit else {
            throw ChatError(.connectionClosed, "the client is not reading: \(state.outboundBytes) bytes are waiting for it")
        }
        Self.push(packet, into: &state)
    }

    /// Queues the last packets of a session the caller closes next, in one step, so that a GET waiting over
    /// polling gets them all (one at a time, it would get only the first: the session is gone before the next GET).
    /// Over the buffer's bound they are dropped: the close follows either way.
    func enqueueLast(_ packets: [String]) {
        self.state.withLock { state in
            guard state.closeReason == nil, !packets.isEmpty else { return }
            let size = packets.reduce(0) { $0 + $1.utf8.count }
            guard state.outboundBytes + size <= self.maxBufferedBytes else { return }
            if let waiter = state.waiter {
                state.waiter = nil
                waiter.resume(returning: state.outbound + packets)
                state.outbound = []
                state.outboundBytes = 0
            } else {
                state.outbound.append(contentsOf: packets)
                state.outboundBytes += size
                Self.wakeWriter(&state)
            }
        }
    }

    /// Hands `packet` to the reader waiting for it, or buffers it (bounds are the caller's).
    private static func push(_ packet: String, into state: inout State) {
        if let waiter = state.waiter {
            state.waiter = nil
            waiter.resume(returning: [packet])
        } else {
            state.outbound.append(packet)
            state.outboundBytes += packet.utf8.count
            Self.wakeWriter(&state)
        }
    }

    /// Wakes an idle WebSocket writer, and, once the session is closed, a blocked one (the rest and the close go
    /// out whatever the socket's buffer holds: the session's bound already capped it). Inside the lock: a wake
    /// only schedules work on the connection's event loop.
    private static func wakeWriter(_ state: inout State) {
        switch state.writer {
        case .idle(let wake):
            state.writer = .woken(wake: wake)
            wake()
        case .blocked(let wake) where state.closeReason != nil:
            state.writer = .woken(wake: wake)
            wake()
        case .none, .woken, .blocked, .closing, .finished:
            break
        }
    }

    /// Queues a Socket.IO EVENT for the socket, with an acknowledgement id when `acknowledgement` is given.
    func enqueueEvent(_ nameAndPayload: String, acknowledgement: Acknowledgement?) throws(ChatError) {
        try self.state.withLock { state throws(ChatError) in
            guard state.socket != nil else { throw ChatError(.connectionClosed, "the connection is closed") }
            var packet = "42"
            if let acknowledgement {
                let id = state.socket!.nextAckID
                state.socket!.nextAckID += 1
                if state.socket!.pendingAcks.count >= state.socket!.sweepAcksAt {
                    state.socket!.pendingAcks = state.socket!.pendingAcks.filter { !$0.value.isCompleted }
                    state.socket!.sweepAcksAt = max(64, state.socket!.pendingAcks.count * 2)
                }
                state.socket!.pendingAcks[id] = acknowledgement
                packet += String(id)
            }
            packet += nameAndPayload
            if state.socket!.announced {
                try Self.enqueue(packet, into: &state, limit: self.maxBufferedBytes)
            } else {
                guard state.outboundBytes + state.socket!.heldBytes + packet.utf8.count <= self.maxBufferedBytes else {
                    throw ChatError(.connectionClosed, "the client is not reading: its buffer is full")
                }
                state.socket!.held.append(packet)
                state.socket!.heldBytes += packet.utf8.count
            }
        }
    }

    /// Sends the CONNECT reply, then whatever was emitted to the socket while the engine registered it; from now
    /// on events go out directly. Returns false when the session closed meanwhile.
    func announce(_ reply: String) -> Bool {
        self.state.withLock { state in
            guard state.closeReason == nil, state.socket != nil else { return false }
            let held = state.socket!.held
            state.socket!.held = []
            state.socket!.heldBytes = 0
            state.socket!.announced = true
            // The bound was checked when each was held.
            for packet in [reply] + held { Self.push(packet, into: &state) }
            return true
        }
    }

    /// Waits for outbound packets and takes them, at most about `maxBytes` of them (always at least one).
    /// Returns nil once the session is closed and drained, and an empty array when the waiting task is cancelled.
    func take(maxBytes: Int) async -> [String]? {
        let ready: [String]?? = self.state.withLock { state in
            if !state.outbound.isEmpty { return .some(self.takeBuffered(&state, maxBytes: maxBytes)) }
            if state.closeReason != nil { return .some(nil) }
            return .none
        }
        if let ready { return ready }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[String]?, Never>) in
                self.state.withLock { state in
                    if !state.outbound.isEmpty {
                        continuation.resume(returning: self.takeBuffered(&state, maxBytes: maxBytes))
                    } else if state.closeReason != nil {
                        continuation.resume(returning: nil)
                    } else if Task.isCancelled {
                        continuation.resume(returning: [])
                    } else {
                        state.waiter = continuation
                    }
                }
            }
        } onCancel: {
            self.state.withLock { state in
                state.waiter?.resume(returning: [])
                state.waiter = nil
            }
        }
    }

    // MARK: WebSocket writer

    /// From now on packets leave through the WebSocket writer that `wake` schedules: it runs when there is
    /// something to write (or the close to send), calls ``nextWrite(socketWritable:)`` until told to stop, and
    /// holds nothing while the session is idle. Wakes it at once when packets are waiting or the session is closed.
    func useWriter(_ wake: @escaping @Sendable () -> Void) {
        self.state.withLock { state in
            guard case .none = state.writer else { return }
            state.writer = .idle(wake: wake)
            if !state.outbound.isEmpty || state.closeReason != nil { Self.wakeWriter(&state) }
        }
    }

    /// The writer's next step, given whether the socket takes more now.
    func nextWrite(socketWritable: Bool) -> WriterStep {
        self.state.withLock { state in
            let wake: @Sendable () -> Void
            switch state.writer {
            case .idle(let current), .woken(let current), .blocked(let current): wake = current
            case .none, .closing, .finished: return .stop
            }
            if !state.outbound.isEmpty {
                guard socketWritable || state.closeReason != nil else {
                    state.writer = .blocked(wake: wake)
                    return .stop
                }
                state.writer = .woken(wake: wake)
                return .write(self.takeBuffered(&state, maxBytes: Int.max))
            }
            if let reason = state.closeReason {
                state.writer = .closing(nil)
                return .close(reason)
            }
            state.writer = .idle(wake: wake)
            return .stop
        }
    }

    /// Records the task sending the close (see ``WriterStep/close(_:)``), so ``cancelWriter()`` can end it.
    func writerClosing(_ task: Task<Void, Never>) {
        self.state.withLock { state in
            if case .closing(nil) = state.writer { state.writer = .closing(task) }
        }
    }

    /// Cancels the close being sent, if any: a close waiting for a client that stopped reading gives up.
    func cancelWriter() {
        self.state.withLock { state -> Task<Void, Never>? in
            if case .closing(let task) = state.writer { return task }
            return nil
        }?.cancel()
    }

    /// The writer closed the WebSocket, or gave up on it: nothing more leaves this session.
    func writerFinished() {
        let waiters = self.state.withLock { state in
            state.writer = .finished
            defer { state.writerFinishedWaiters = [] }
            return state.writerFinishedWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once a writer has closed the WebSocket (see ``writerFinished()``).
    func waitUntilWriterFinished() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let finished = self.state.withLock { state in
                guard case .finished = state.writer else {
                    state.writerFinishedWaiters.append(continuation)
                    return false
                }
                return true
            }
            if finished { continuation.resume() }
        }
    }

    /// Takes what is buffered now, without waiting (empty when nothing is).
    func takeBuffered(maxBytes: Int) -> [String] {
        self.state.withLock { self.takeBuffered(&$0, maxBytes: maxBytes) }
    }

    private func takeBuffered(_ state: inout State, maxBytes: Int) -> [String] {
        var taken: [String] = []
        var bytes = 0
        while let next = state.outbound.first, taken.isEmpty || bytes + next.utf8.count + 1 <= maxBytes {
            state.outbound.removeFirst()
            bytes += next.utf8.count + 1
            state.outboundBytes -= next.utf8.count
            taken.append(next)
        }
        if state.outboundBytes <= self.writableThreshold, !state.writableWaiters.isEmpty {
            // Resuming inside the lock is safe: a continuation's resume only schedules its task.
            for waiter in state.writableWaiters { waiter.resume() }
            state.writableWaiters = []
        }
        return taken
    }

    /// Answers the long-polling GET that is waiting, if one is, with `packet` alone (never buffered, so it can
    /// never go out later on another transport); returns whether a GET was waiting.
    @discardableResult
    func answerPendingPoll(with packet: String) -> Bool {
        let waiter: CheckedContinuation<[String]?, Never>? = self.state.withLock { state in
            guard state.transport == .polling, let waiter = state.waiter else { return nil }
            state.waiter = nil
            return waiter
        }
        waiter?.resume(returning: [packet])
        return waiter != nil
    }

    /// Whether the unread backlog is at most what one read takes (closed sessions count as writable).
    var isWritable: Bool {
        self.state.withLock { $0.closeReason != nil || $0.outboundBytes <= self.writableThreshold }
    }

    /// Returns once the client has read its backlog down to what one read takes, or the session closed.
    func waitUntilWritable() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state in
                guard state.closeReason == nil, state.outboundBytes > self.writableThreshold else { return true }
                state.writableWaiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// How many acknowledgements the socket holds (pending, or completed and not yet swept).
    var acknowledgementTableSize: Int {
        self.state.withLock { $0.socket?.pendingAcks.count ?? 0 }
    }

    // MARK: Long polling and upgrade

    /// Marks a long-polling GET as in progress; false when one already is (the client broke the protocol).
    func beginPoll() -> Bool {
        self.state.withLock { state in
            guard !state.pollInProgress else { return false }
            state.pollInProgress = true
            return true
        }
    }

    func endPoll() {
        self.state.withLock { $0.pollInProgress = false }
    }

    /// Starts an upgrade to WebSocket; false when the session is not a polling one or is already upgrading.
    func beginUpgrade() -> Bool {
        self.state.withLock { state in
            guard state.transport == .polling, !state.upgrading, state.closeReason == nil else { return false }
            state.upgrading = true
            return true
        }
    }

    /// The upgrade's WebSocket went away before the client confirmed the upgrade; polling goes on.
    func abandonUpgrade() {
        self.state.withLock { state in
            if state.transport == .polling { state.upgrading = false }
        }
    }

    /// The client confirmed the upgrade: from now on packets leave over the WebSocket.
    func completeUpgrade() {
        self.state.withLock { state in
            state.transport = .websocket
            state.upgrading = false
            // Wake the last poll so the client sees it end.
            state.waiter?.resume(returning: [EngineIOPacket(.noop).encoded])
            state.waiter = nil
        }
    }

    // MARK: Socket.IO socket

    /// Opens the socket; false when the session is closed or already has one.
    func attach(_ socket: Socket) -> Bool {
        self.state.withLock { state in
            guard state.closeReason == nil, state.socket == nil else { return false }
            state.socket = socket
            state.socketlessSince = nil
            return true
        }
    }

    /// Records that the engine knows the socket; false when it closed meanwhile (the caller tells the engine).
    func markEngineKnows(_ connection: ConnectionID) -> Bool {
        self.state.withLock { state in
            guard state.closeReason == nil, state.socket?.connection == connection else { return false }
            state.socket?.engineKnows = true
            return true
        }
    }

    /// Closes the socket (a client DISCONNECT) but keeps the session; returns the socket that was open.
    func detach() -> Socket? {
        let socket: Socket? = self.state.withLock { state in
            defer {
                state.socket = nil
                state.socketlessSince = self.clock.now()
            }
            return state.socket
        }
        for acknowledgement in socket?.pendingAcks.values ?? [:].values {
            acknowledgement.fail(ChatError(.connectionClosed, "the client disconnected"))
        }
        return socket
    }

    /// The acknowledgement waiting for client ACK `id`, removed.
    func takeAcknowledgement(_ id: UInt64) -> Acknowledgement? {
        self.state.withLock { state in state.socket?.pendingAcks.removeValue(forKey: id) }
    }

    /// The client ACKed event `id`: completes the acknowledgement waiting for it, if any. False when no socket is
    /// open, so the packet goes the general way (which reports an ACK before CONNECT as a protocol error).
    func clientAcknowledged(_ id: UInt64) -> Bool {
        guard self.hasSocket else { return false }
        self.takeAcknowledgement(id)?.succeed()
        return true
    }

    /// Runs `work` (a `user:reconnected` drain) in its own task unless one is running; false when one is.
    ///
    /// The drain waits for the client's acknowledgements, which arrive on the same connection, so it must not
    /// hold up the reading of that connection.
    func startReconnect(_ work: @escaping @Sendable () async -> Void) -> Bool {
        let start = self.state.withLock { state in
            guard !state.reconnectRunning else { return false }
            state.reconnectRunning = true
            return true
        }
        guard start else { return false }
        Task {
            await work()
            self.state.withLock { $0.reconnectRunning = false }
        }
        return true
    }

    // MARK: Ping and close

    func pongReceived(pingInterval: Duration) {
        self.state.withLock { state in
            state.pingSentAt = nil
            state.nextPingAt = self.clock.now() + pingInterval
        }
    }

    /// Decides, at `now`, whether the session needs a ping or has timed out.
    func timerAction(now: Duration, pingTimeout: Duration, connectTimeout: Duration) -> TimerAction {
        self.state.withLock { state in
            guard state.closeReason == nil else { return .none }
            if let sent = state.pingSentAt {
                return now - sent >= pingTimeout ? .close("ping timeout") : .none
            }
            if let since = state.socketlessSince, now - since > connectTimeout {
                return .close("no Socket.IO CONNECT within \(connectTimeout)")
            }
            if now >= state.nextPingAt {
                // Timed from when the ping was due, so a late tick does not push the timeout later too.
                state.pingSentAt = state.nextPingAt
                return .ping
            }
            return .none
        }
    }

    /// Closes the session; returns its socket the first time (to tell the engine), nil if it was already closed.
    /// Queued packets stay readable so a final close packet or error reaches the client.
    func close(reason: String) -> (closed: Bool, socket: Socket?) {
        let result: (Bool, Socket?, CheckedContinuation<[String]?, Never>?) = self.state.withLock { state in
            guard state.closeReason == nil else { return (false, nil, nil) }
            state.closeReason = reason
            let socket = state.socket
            state.socket = nil
            let waiter = state.waiter
            state.waiter = nil
            for writable in state.writableWaiters { writable.resume() }
            state.writableWaiters = []
            Self.wakeWriter(&state)
            return (true, socket, waiter)
        }
        result.2?.resume(returning: nil)
        for acknowledgement in result.1?.pendingAcks.values ?? [:].values {
            acknowledgement.fail(ChatError(.connectionClosed, "the connection closed: \(reason)"))
        }
        return (result.0, result.1)
    }

    var closeReason: String? { self.state.withLock { $0.closeReason } }
}
