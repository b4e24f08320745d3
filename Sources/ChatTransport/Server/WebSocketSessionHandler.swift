import NIOCore
import NIOWebSocket

/// A WebSocket session's work that stays on its connection's event loop: writing what the session queued, and
/// taking the client's acknowledgements of events.
///
/// **Writes.** Woken once per burst (``EngineSession/useWriter(_:)``), the handler takes everything the session
/// buffered, writes it as text frames and flushes once; no task runs for the connection between bursts, and no
/// frame waits for a hop of its own. While the socket's send buffer is over its high-water mark it leaves the
/// packets in the session's buffer, whose bound closes a client that stopped reading, and goes on when the channel
/// says it is writable again. The close itself goes through swift-websocket's writer (`closeWebSocket`), which
/// owns the closing handshake; it is sent after the frames written here, since both reach the channel in order on
/// its loop. A client that neither reads the close nor answers it is cut off `closeTimeout` later.
///
/// **Acknowledgements.** A client's ACK of an event (`43<id>[...]`, half of what a busy client sends) is taken
/// here, as the frame is decoded: it completes the waiting delivery without leaving the loop. Every other frame
/// goes on to swift-websocket's reader, as do ACKs inside a fragmented message, ACKs that are not plain ASCII
/// (the reader validates UTF-8) and anything after a close frame.
///
/// Sits right after the WebSocket frame decoder of an upgraded connection's pipeline.
final class WebSocketSessionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let session: EngineSession
    /// Sends the WebSocket close with a reason, then reports ``EngineSession/writerFinished()``; returns its task.
    private let closeWebSocket: @Sendable (String) -> Task<Void, Never>
    /// How long the close may take before the connection is closed under it.
    private let closeTimeout: TimeAmount
    private var context: ChannelHandlerContext?
    /// Inside a fragmented message, or past a close frame: frames are the reader's alone.
    private var fragmented = false
    private var closeSeen = false

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

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = Self.unwrapInboundIn(data)
        if self.takeAcknowledgement(frame) { return }
        switch frame.opcode {
        case .text, .binary: self.fragmented = !frame.fin
        case .continuation where frame.fin: self.fragmented = false
        case .connectionClose: self.closeSeen = true
        default: break
        }
        context.fireChannelRead(data)
    }

    /// Completes the acknowledgement a frame carries, if it is a plain client ACK; false to pass the frame on.
    private func takeAcknowledgement(_ frame: WebSocketFrame) -> Bool {
        guard !self.fragmented, !self.closeSeen, frame.fin, frame.opcode == .text, !frame.rsv1, !frame.rsv2, !frame.rsv3 else {
            return false
        }
        // The prefix first, unmasked in place: a `message:send` frame is not unmasked and copied here only to be
        // passed on to the reader, which unmasks it again.
        guard let prefix = self.unmaskedPrefix(of: frame), prefix == (UInt8(ascii: "4"), UInt8(ascii: "3")) else { return false }
        let id: UInt64? = frame.unmaskedData.withUnsafeReadableBytes { bytes in
            guard let id = SocketIOServer.fastAck(bytes: bytes.dropFirst()), bytes.allSatisfy({ $0 < 0x80 }) else { return nil }
            return id
        }
        guard let id else { return false }
        return self.session.clientAcknowledged(id)
    }

    /// The first two payload bytes as the client meant them (no extension data: the reserved bits are clear).
    private func unmaskedPrefix(of frame: WebSocketFrame) -> (UInt8, UInt8)? {
        let data = frame.data
        guard let first = data.getInteger(at: data.readerIndex, as: UInt8.self),
            let second = data.getInteger(at: data.readerIndex + 1, as: UInt8.self)
        else { return nil }
        guard let key = frame.maskKey else { return (first, second) }
        return (first ^ key[0], second ^ key[1])
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
