import NIOCore
import NIOWebSocket

/// Writes a WebSocket session's packets as text frames straight into its channel, on the channel's event loop.
///
/// Woken once per burst (``EngineSession/useWriter(_:)``), it takes everything the session buffered, writes it as
/// frames and flushes once; no task runs for the connection between bursts, and no frame waits for a hop of its
/// own. While the socket's send buffer is over its high-water mark the writer leaves the packets in the session's
/// buffer, whose bound closes a client that stopped reading, and goes on when the channel says it is writable
/// again. The close itself goes through swift-websocket's writer (`closeWebSocket`), which owns the closing
/// handshake; it is sent after the frames written here, since both reach the channel in order on its loop. A
/// client that neither reads the close nor answers it is cut off `closeTimeout` later: the connection is closed.
///
/// Added last in the pipeline of an upgraded connection, after the async channel that swift-websocket reads from:
/// its writes pass through that handler (which forwards them) to the frame encoder.
final class SessionFrameWriter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundOut = WebSocketFrame

    private let session: EngineSession
    /// Sends the WebSocket close with a reason, then reports ``EngineSession/writerFinished()``; returns its task.
    private let closeWebSocket: @Sendable (String) -> Task<Void, Never>
    /// How long the close may take before the connection is closed under it.
    private let closeTimeout: TimeAmount
    private var context: ChannelHandlerContext?

    init(session: EngineSession, closeTimeout: TimeAmount, closeWebSocket: @escaping @Sendable (String) -> Task<Void, Never>) {
        self.session = session
        self.closeTimeout = closeTimeout
        self.closeWebSocket = closeWebSocket
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.drain() }
        context.fireChannelWritabilityChanged()
    }

    /// Writes what the session holds until it has nothing more for now (or the socket is full), then flushes.
    /// Once the channel is gone, packets are dropped and the close step still runs, so the session finishes.
    func drain() {
        var wrote = false
        defer { if wrote { self.context?.flush() } }
        while true {
            switch self.session.nextWrite(socketWritable: self.context?.channel.isWritable ?? true) {
            case .write(let packets):
                guard let context = self.context else { continue }
                for packet in packets {
                    let frame = WebSocketFrame(fin: true, opcode: .text, data: context.channel.allocator.buffer(string: packet))
                    context.write(self.wrapOutboundOut(frame), promise: nil)
                }
                wrote = true
            case .stop:
                return
            case .close(let reason):
                if let context = self.context {
                    if wrote { context.flush() }
                    wrote = false
                    let channel = context.channel
                    let cutOff = context.eventLoop.scheduleTask(in: self.closeTimeout) { channel.close(promise: nil) }
                    channel.closeFuture.whenComplete { _ in cutOff.cancel() }
                }
                self.session.writerClosing(self.closeWebSocket(reason))
                return
            }
        }
    }
}
