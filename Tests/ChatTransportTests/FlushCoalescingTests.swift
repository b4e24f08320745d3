@testable import ChatTransport
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing

/// The handler that gives a busy connection one `writev` per loop tick instead of one per frame.
@Suite("Flush coalescing")
struct FlushCoalescingTests {
    private func channel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(FlushCoalescingHandler())
        return channel
    }

    private func outbound(_ channel: EmbeddedChannel) throws -> [String] {
        var frames: [String] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { frames.append(String(buffer: buffer)) }
        return frames
    }

    @Test("Frames flushed one by one in one tick leave together at the end of the tick, in order")
    func coalesces() throws {
        let channel = try self.channel()
        for frame in ["a", "b", "c"] {
            channel.writeAndFlush(ByteBuffer(string: frame), promise: nil)
        }
        // Still in the tick: nothing reached the socket yet.
        #expect(try self.outbound(channel).isEmpty)
        channel.embeddedEventLoop.run()
        #expect(try self.outbound(channel) == ["a", "b", "c"])
        // The next tick's frame gets a flush of its own.
        channel.writeAndFlush(ByteBuffer(string: "d"), promise: nil)
        channel.embeddedEventLoop.run()
        #expect(try self.outbound(channel) == ["d"])
        _ = try channel.finish()
    }

    @Test("A close right after writes still sends them first, over a real socket")
    func closeFlushesFirst() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        // The server writes three frames and closes in the same tick, as a WebSocket's last packets and its close.
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FlushCoalescingHandler())
                    try channel.pipeline.syncOperations.addHandler(SayAndClose())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let received = NIOLockedValueBox("")
        let closed = group.next().makePromise(of: Void.self)
        let client = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(received: received, closed: closed))
                }
            }
            .connect(to: server.localAddress!).get()
        try await closed.futureResult.get()
        #expect(received.withLockedValue { $0 } == "onetwothree")
        try? await client.close()
        try await server.close()
    }
}

/// Writes three frames, each flushed, and closes, all in the tick the connection becomes active.
private final class SayAndClose: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        for frame in ["one", "two", "three"] {
            context.writeAndFlush(NIOAny(ByteBuffer(string: frame)), promise: nil)
        }
        context.close(promise: nil)
    }
}

/// Gathers what the peer sent until it closes.
private final class Collector: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let received: NIOLockedValueBox<String>
    let closed: EventLoopPromise<Void>

    init(received: NIOLockedValueBox<String>, closed: EventLoopPromise<Void>) {
        self.received = received
        self.closed = closed
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let text = String(buffer: Self.unwrapInboundIn(data))
        self.received.withLockedValue { $0 += text }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.closed.succeed()
    }
}
