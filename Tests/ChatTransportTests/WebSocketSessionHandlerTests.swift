import ChatDomain
import ChatScenarioKit
@testable import ChatTransport
import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing

/// The client's ACKs are taken on the connection's event loop; everything else goes on to the WebSocket reader.
@Suite("WebSocket session handler: acknowledgements on the event loop")
struct WebSocketSessionHandlerTests {
    /// A connected session with one event emitted under acknowledgement id 0, and a channel whose pipeline holds
    /// the handler.
    private func setUp() throws -> (EmbeddedChannel, EngineSession, Acknowledgement) {
        let session = EngineSession(
            id: "s", transport: .websocket, bearerToken: nil, pingInterval: .seconds(25), maxBufferedBytes: 1_000_000,
            clock: ManualMonotonicClock()
        )
        #expect(session.attach(EngineSession.Socket(connection: ConnectionID("c1"), user: Harness.alice)))
        #expect(session.announce("40"))
        let acknowledgement = Acknowledgement()
        try session.enqueueEvent(#"["message:received",{}]"#, acknowledgement: acknowledgement)
        let handler = WebSocketSessionHandler(session: session, closeTimeout: .seconds(1)) { _ in Task {} }
        let channel = EmbeddedChannel(handler: handler)
        return (channel, session, acknowledgement)
    }

    private func text(_ string: String, fin: Bool = true, opcode: WebSocketOpcode = .text) -> WebSocketFrame {
        WebSocketFrame(fin: fin, opcode: opcode, data: ByteBuffer(string: string))
    }

    @Test("An ACK completes its delivery where it is decoded and goes no further")
    func ackTaken() throws {
        let (channel, _, acknowledgement) = try self.setUp()
        try channel.writeInbound(self.text("430[]"))
        #expect(acknowledgement.succeeded == true)
        #expect(try channel.readInbound(as: WebSocketFrame.self) == nil, "the reader never sees it")
        _ = try channel.finish()
    }

    @Test("A masked ACK, as every client sends it, is taken too; a masked message:send goes on untouched")
    func maskedFrames() throws {
        let (channel, _, acknowledgement) = try self.setUp()
        let key: WebSocketMaskingKey = [0x37, 0xFA, 0x21, 0x3D]
        let send = Self.masked(#"42["message:send",{}]"#, key: key)
        try channel.writeInbound(send)
        #expect(try channel.readInbound(as: WebSocketFrame.self) == send, "passed on as it came, still masked")
        #expect(acknowledgement.succeeded == nil)
        try channel.writeInbound(Self.masked("430[]", key: key))
        #expect(acknowledgement.succeeded == true)
        #expect(try channel.readInbound(as: WebSocketFrame.self) == nil, "the reader never sees it")
        _ = try channel.finish()
    }

    /// A text frame as a client sends it: the payload masked with `key`.
    private static func masked(_ string: String, key: WebSocketMaskingKey) -> WebSocketFrame {
        var data = ByteBuffer(string: string)
        data.webSocketMask(key)
        return WebSocketFrame(fin: true, opcode: .text, maskKey: key, data: data)
    }

    @Test("Everything else reaches the reader: other packets, fragments, non-ASCII ACKs, frames after a close")
    func othersPassed() throws {
        let (channel, _, acknowledgement) = try self.setUp()
        let passed = [
            self.text(#"42["message:send",{}]"#),
            self.text("430[\"é\"]"),
            self.text("4", fin: false),
            self.text("30[]", fin: true, opcode: .continuation),
            WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer()),
            self.text("430[]"),
        ]
        for frame in passed {
            try channel.writeInbound(frame)
            #expect(try channel.readInbound(as: WebSocketFrame.self) == frame)
        }
        #expect(acknowledgement.succeeded == nil, "none of them was taken as the ACK")
        _ = try channel.finish()
    }

    @Test("An ACK inside a fragmented message is left to the reader, and the next whole one is taken again")
    func fragments() throws {
        let (channel, _, acknowledgement) = try self.setUp()
        try channel.writeInbound(self.text("4", fin: false))
        try channel.writeInbound(self.text("430[]"))
        #expect(try channel.readInbound(as: WebSocketFrame.self) != nil)
        #expect(try channel.readInbound(as: WebSocketFrame.self) != nil, "a text frame inside a fragmented message is the reader's")
        try channel.writeInbound(self.text("[]", opcode: .continuation))
        _ = try channel.readInbound(as: WebSocketFrame.self)
        try channel.writeInbound(self.text("430[]"))
        #expect(try channel.readInbound(as: WebSocketFrame.self) == nil)
        #expect(acknowledgement.succeeded == true)
        _ = try channel.finish()
    }

    @Test("Writes leave as text frames in the order queued, flushed once per burst")
    func writes() throws {
        let (channel, session, _) = try self.setUp()
        let handler = try channel.pipeline.syncOperations.handler(type: WebSocketSessionHandler.self)
        session.useWriter {}
        handler.drain()
        var written: [String] = []
        while let frame = try channel.readOutbound(as: WebSocketFrame.self) {
            #expect(frame.opcode == .text && frame.fin)
            written.append(String(buffer: frame.data))
        }
        #expect(written == ["40", #"420["message:received",{}]"#])
        _ = try channel.finish()
    }
}
