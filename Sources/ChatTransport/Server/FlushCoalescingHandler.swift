import NIOCore

/// Turns the flushes asked for during one event-loop tick into one, at the end of that tick.
///
/// Hummingbird's WebSocket writer flushes after every frame: each Engine.IO packet cost a `writev` of its own,
/// and under load those system calls took a sixth of the server's CPU. Frames written while the loop
/// is busy (the writer task's frames arrive as one loop task each) now leave in one `writev`; a frame written on
/// an idle loop leaves as soon as the current tick ends, a few microseconds later. A close flushes what is pending
/// first, so nothing written before it is dropped. (Netty's `FlushConsolidationHandler` does the same.)
final class FlushCoalescingHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    private var flushPending = false

    init() {}

    func flush(context: ChannelHandlerContext) {
        guard !self.flushPending else { return }
        self.flushPending = true
        let loopBound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = loopBound.value
            handler.flushNow(context: context)
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        self.flushNow(context: context)
        context.close(mode: mode, promise: promise)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.flushNow(context: context)
    }

    private func flushNow(context: ChannelHandlerContext) {
        guard self.flushPending else { return }
        self.flushPending = false
        context.flush()
    }
}
