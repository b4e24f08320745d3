import ChatDomain
import ChatScenarioKit
@testable import ChatTransport
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// A WebSocket client that stops reading: the server must not buffer for it without limit, nor keep its
/// connection open once it has given up on it.
@Suite("Slow WebSocket readers")
struct SlowReaderTests {
    @Test("A client that stops reading is refused at the session's bound, its session closed and its connection cut off")
    func stopsReading() async throws {
        var socketIO = SocketIOConfiguration()
        socketIO.maxBufferedBytes = 256 * 1024
        socketIO.maxPayload = 64 * 1024
        socketIO.pingInterval = .seconds(60)
        socketIO.pingTimeout = .seconds(1)
        try await withLiveServer(socketIO: socketIO) { live in
            let client = try await RawWebSocketClient.connect(port: live.port, token: try await live.token(Harness.alice))
            try await client.stopReading()
            // 8 KB events, one every 2 ms so the server's event loop can move each into the socket: a server that
            // wrote regardless of the socket's buffer would take all 24 MB.
            let event = OutboundEvent.messageError(MessageErrorPayload(code: "test", message: String(repeating: "x", count: 8_000)))
            var delivered = 0
            while delivered < 3_000, live.server.emit(event, toUser: Harness.alice.id) == 1 {
                delivered += 1
                try await Task.sleep(for: .milliseconds(2))
            }
            #expect(delivered < 3_000, "the server took \(delivered) events of 8 KB for a client that reads nothing")
            #expect(live.logs.contains("Engine.IO session closed"))
            // The close cannot reach a client that reads nothing: the connection is closed under it after
            // pingTimeout (1 s here).
            await eventually("the server closed the connection", timeout: .seconds(10), every: .milliseconds(20)) {
                live.server.httpConnectionCount == 0
            }
            client.close()
        }
    }
}

/// A WebSocket client on a raw TCP connection with a small receive buffer, which can stop reading.
struct RawWebSocketClient: Sendable {
    let channel: any Channel
    let received: NIOLockedValueBox<String>

    /// Connects, opens an Engine.IO session over WebSocket with a bearer token, and connects the Socket.IO socket.
    static func connect(port: Int, token: String) async throws -> RawWebSocketClient {
        let received = NIOLockedValueBox("")
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.so_rcvbuf), value: 4096)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TextCollector(received: received))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let client = RawWebSocketClient(channel: channel, received: received)
        let request = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            + "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + "Authorization: Bearer \(token)\r\n\r\n"
        try await channel.writeAndFlush(ByteBuffer(string: request))
        try await client.waitFor("0{\"sid\"")
        try await client.send("40")
        try await client.waitFor("40{\"sid\"")
        return client
    }

    /// Sends one masked text frame (the mask key is zero, so the payload reads as is).
    func send(_ text: String) async throws {
        precondition(text.utf8.count < 126)
        var frame = ByteBuffer(bytes: [0x81, 0x80 | UInt8(text.utf8.count), 0, 0, 0, 0])
        frame.writeString(text)
        try await self.channel.writeAndFlush(frame)
    }

    func waitFor(_ text: String) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !self.received.withLockedValue({ $0.contains(text) }) {
            guard ContinuousClock.now < deadline else {
                throw TestServerError("never received \(text): \(self.received.withLockedValue { $0.prefix(300) })")
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Reads nothing more from the socket: the server's writes pile up in the kernel, then in the server.
    func stopReading() async throws {
        try await self.channel.setOption(.autoRead, value: false).get()
    }

    func close() {
        self.channel.close(promise: nil)
    }
}

/// Gathers what the server sent, as text (frame headers included).
private final class TextCollector: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let received: NIOLockedValueBox<String>

    init(received: NIOLockedValueBox<String>) { self.received = received }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let text = String(decoding: Self.unwrapInboundIn(data).readableBytesView, as: UTF8.self)
        self.received.withLockedValue { $0 += text }
    }
}
