import ChatDomain
import DequeModule
import Synchronization

/// One Engine.IO session: its outbound buffer, its transport, its ping state and the Socket.IO socket on it.
///
/// Everything a client is sent goes through ``enqueue(_:)`` (synchronous, so the engine's emit order is the wire
/// order) and leaves through ``take(maxBytes:)``, which a long-polling GET awaits, or, over WebSocket, through
/// writer tasks started when there is something to write (``useWriter(_:)``).
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
        /// Over WebSocket: starts a writer task (see ``useWriter(_:)``); nil before, and once the writer finished.
        var startWriter: (@Sendable () -> Task<Void, Never>)?
        /// The running writer; nil while none runs.
        var writer: Task<Void, Never>?
        var writerFinished = false
        var writerFinishedWaiters: [CheckedContinuation<Void, Never>] = []
    }

    /// What the WebSocket writer does next (see ``nextWrite()``).
    enum WriterStep {
        /// Write these packets, then ask again.
        case write([String])
        /// Nothing to write: the writer ends; the next packet starts another.
        case idle
        /// The session is closed and everything was written: close the WebSocket (with the reason) and finish.
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
        clock: any MonotonicClock
    ) {
        self.clock = clock
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

    /// Starts a WebSocket writer when none is running. (Inside the lock: starting one only creates its task.)
    private static func wakeWriter(_ state: inout State) {
        guard state.writer == nil, let start = state.startWriter else { return }
        state.writer = start()
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

    /// From now on packets leave through writer tasks that `start` creates: one runs while there is something to
    /// write (or the close to send) and ends when the buffer is empty, so an idle WebSocket holds no writer task
    /// (and none of the stack a writer's frames need). Starts one at once when packets are waiting or the session
    /// is closed.
    func useWriter(_ start: @escaping @Sendable () -> Task<Void, Never>) {
        self.state.withLock { state in
            state.startWriter = start
            if !state.outbound.isEmpty || state.closeReason != nil { Self.wakeWriter(&state) }
        }
    }

    /// Cancels the running writer, if any (one waiting for a client that stopped reading gives up).
    func cancelWriter() {
        self.state.withLock { $0.writer }?.cancel()
    }

    /// The writer's next step; `idle` ends the writer (the next packet starts another).
    func nextWrite() -> WriterStep {
        self.state.withLock { state in
            if !state.outbound.isEmpty { return .write(self.takeBuffered(&state, maxBytes: Int.max)) }
            if let reason = state.closeReason { return .close(reason) }
            state.writer = nil
            return .idle
        }
    }

    /// The writer closed the WebSocket, or gave up on it: nothing more leaves this session.
    func writerFinished() {
        let waiters = self.state.withLock { state in
            state.writerFinished = true
            state.startWriter = nil
            state.writer = nil
            defer { state.writerFinishedWaiters = [] }
            return state.writerFinishedWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once a writer has closed the WebSocket (see ``writerFinished()``).
    func waitUntilWriterFinished() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let finished = self.state.withLock { state in
                if !state.writerFinished { state.writerFinishedWaiters.append(continuation) }
                return state.writerFinished
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
