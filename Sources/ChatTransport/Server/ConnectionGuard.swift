import ChatDomain
import HummingbirdCore
import Logging
import NIOCore
import Synchronization

/// Bounds what a TCP connection can hold before it has said anything useful: a cap on open connections and a
/// deadline for the first request head.
///
/// Hummingbird's idle timeout starts only once a first request head has been decoded (and, on a server that
/// accepts WebSocket upgrades, its handler is installed only then), so a peer that sends half a head, or nothing,
/// kept its connection forever; enough of them exhausted the file descriptors and `/healthz` stopped answering.
final class ConnectionGuard: Sendable {
    let maxConnections: Int
    let headerTimeout: Duration
    let logger: Logger
    private let open = Atomic<Int>(0)
    private let refusals = RefusalLog()

    init(maxConnections: Int, headerTimeout: Duration, logger: Logger) {
        self.maxConnections = maxConnections
        self.headerTimeout = headerTimeout
        self.logger = logger
    }

    /// How many connections are open.
    var openConnections: Int { self.open.load(ordering: .relaxed) }

    /// Counts a new connection; false (and logged) when the cap is reached.
    func admit() -> Bool {
        let count = self.open.wrappingAdd(1, ordering: .relaxed).newValue
        guard count > self.maxConnections else { return true }
        self.open.wrappingSubtract(1, ordering: .relaxed)
        if let count = self.refusals.admit("connections") {
            self.logger.warning(
                "HTTP connection limit reached; closing new connections",
                metadata: ["http.connections.max": "\(self.maxConnections)", "http.connections.refused_since_last_line": "\(count)"]
            )
        }
        return false
    }

    func release() {
        self.open.wrappingSubtract(1, ordering: .relaxed)
    }
}

/// The channel handler at the front of every connection's pipeline (bytes in, before any HTTP decoding).
///
/// It also closes gracefully when the peer is still sending: closing a socket with unread input makes the kernel
/// answer with a TCP reset, which destroys what was just written (a WebSocket close frame 1009 for a message over
/// `maxPayload` never reached the client). So a close that comes while input is arriving shuts down the output
/// first (the peer reads everything sent, then end of stream), discards further input, and closes fully when the
/// peer closes or after ``lingerTimeout``.
final class ConnectionGuardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    /// How long a lingering close waits for the peer to finish.
    static let lingerTimeout: TimeAmount = .seconds(1)
    /// Input this recent means the peer is still sending when a close comes.
    static let activeInputWindow: Duration = .milliseconds(250)
    private var lastReadAt: ContinuousClock.Instant?
    private var lingering: EventLoopPromise<Void>?

    private let connectionGuard: ConnectionGuard
    private var admitted = false
    private var started = false
    private var headComplete = false
    /// How much of `\r\n\r\n` the bytes read so far end with.
    private var terminatorMatched = 0
    private var deadline: Scheduled<Void>?

    init(_ connectionGuard: ConnectionGuard) {
        self.connectionGuard = connectionGuard
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard !self.started else { return }
        self.started = true
        guard self.connectionGuard.admit() else {
            context.close(promise: nil)
            return
        }
        self.admitted = true
        let timeout = self.connectionGuard.headerTimeout
        let logger = self.connectionGuard.logger
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.deadline = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: .nanoseconds(Int64(timeout.wholeMilliseconds) * 1_000_000)) {
            logger.debug("HTTP connection closed: no complete request head in time", metadata: ["http.header_timeout_ms": "\(timeout.wholeMilliseconds)"])
            loopBound.value.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Closing: what the peer still sends is read and dropped, so the close does not turn into a reset.
        guard self.lingering == nil else { return }
        self.lastReadAt = .now
        if !self.headComplete {
            let buffer = self.unwrapInboundIn(data)
            if self.scanForEndOfHead(buffer) {
                self.headComplete = true
                self.deadline?.cancel()
                self.deadline = nil
            }
        }
        context.fireChannelRead(data)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all, self.lingering == nil, let last = self.lastReadAt, ContinuousClock.now - last < Self.activeInputWindow else {
            if let lingering = self.lingering, mode == .all {
                // Already closing: this close completes with it.
                lingering.futureResult.cascade(to: promise)
                return
            }
            context.close(mode: mode, promise: promise)
            return
        }
        let done = context.eventLoop.makePromise(of: Void.self)
        done.futureResult.cascade(to: promise)
        self.lingering = done
        // Output first: what was written (a close frame, an error response) is flushed, then end of stream.
        context.close(mode: .output, promise: nil)
        context.read()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: Self.lingerTimeout) {
            // `done` completes in channelInactive, whichever close gets there first.
            loopBound.value.close(mode: .all, promise: nil)
        }
    }

    func read(context: ChannelHandlerContext) {
        context.read()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if self.lingering != nil, let event = event as? ChannelEvent, event == .inputClosed {
            // The peer finished: close now.
            context.close(mode: .all, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.lingering != nil {
            context.read()
            return
        }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.lingering?.succeed()
        self.lingering = nil
        self.deadline?.cancel()
        self.deadline = nil
        if self.admitted {
            self.admitted = false
            self.connectionGuard.release()
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.lingering?.succeed()
        self.lingering = nil
        self.deadline?.cancel()
        if self.admitted {
            self.admitted = false
            self.connectionGuard.release()
        }
    }

    /// Whether `\r\n\r\n` has now been seen, across reads.
    private func scanForEndOfHead(_ buffer: ByteBuffer) -> Bool {
        let terminator: [UInt8] = [13, 10, 13, 10]
        for byte in buffer.readableBytesView {
            if byte == terminator[self.terminatorMatched] {
                self.terminatorMatched += 1
                if self.terminatorMatched == terminator.count { return true }
            } else {
                self.terminatorMatched = byte == 13 ? 1 : 0
            }
        }
        return false
    }
}

/// A server child channel that puts a ``ConnectionGuardHandler`` and a ``FlushCoalescingHandler`` in front of
/// `base`'s pipeline.
struct GuardedChildChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value

    let base: Base
    let connectionGuard: ConnectionGuard

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let connectionGuard = self.connectionGuard
        return channel.eventLoop.makeCompletedFuture {
            // Pipeline: head, the guard, the flush coalescer, then HTTP (and WebSocket after an upgrade).
            try channel.pipeline.syncOperations.addHandler(FlushCoalescingHandler(), position: .first)
            try channel.pipeline.syncOperations.addHandler(ConnectionGuardHandler(connectionGuard), position: .first)
        }.flatMap {
            self.base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await self.base.handle(value: value, logger: logger)
    }
}
