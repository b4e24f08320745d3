import ChatDomain
@testable import ChatTransport
import NIOConcurrencyHelpers
import Testing

/// The WebSocket writer's life: woken by the first packet, stopped by an empty buffer or a full socket, woken
/// again for the close, so an idle WebSocket runs nothing and still gets every packet and its close.
@Suite("WebSocket writer lifecycle")
struct EngineSessionWriterTests {
    private func session() -> EngineSession {
        EngineSession(
            id: "s", transport: .websocket, bearerToken: nil, pingInterval: .seconds(25), maxBufferedBytes: 1_000_000,
            clock: ManualMonotonicClock()
        )
    }

    @Test("A packet wakes the writer once; it takes everything in order, stops when the buffer is empty, and the next packet wakes it again")
    func wakesAndStops() throws {
        let session = self.session()
        let wakes = NIOLockedValueBox(0)
        session.useWriter { wakes.withLockedValue { $0 += 1 } }
        #expect(wakes.withLockedValue { $0 } == 0, "nothing to write: no wake")
        try session.enqueue("2")
        try session.enqueue("3")
        #expect(wakes.withLockedValue { $0 } == 1, "one wake for both packets")
        #expect(session.nextWrite(socketWritable: true) == .write(["2", "3"]))
        #expect(session.nextWrite(socketWritable: true) == .stop, "an empty buffer stops the writer")
        try session.enqueue("4")
        #expect(wakes.withLockedValue { $0 } == 2, "the next packet wakes it again")
    }

    @Test("A full socket leaves packets in the session's buffer, whose bound then refuses more; a close still gets them out")
    func fullSocket() async throws {
        let session = EngineSession(
            id: "s", transport: .websocket, bearerToken: nil, pingInterval: .seconds(25), maxBufferedBytes: 10,
            clock: ManualMonotonicClock()
        )
        let wakes = NIOLockedValueBox(0)
        session.useWriter { wakes.withLockedValue { $0 += 1 } }
        try session.enqueue("42a")
        #expect(session.nextWrite(socketWritable: false) == .stop, "the socket takes nothing: the writer waits")
        try session.enqueue("42b")
        #expect(wakes.withLockedValue { $0 } == 1, "a blocked writer is not woken by more packets")
        #expect(throws: ChatError.self, "over the session's bound: the client is not reading") { try session.enqueue("42cdefgh") }
        // The socket drains: the connection runs the writer again.
        #expect(session.nextWrite(socketWritable: true) == .write(["42a", "42b"]))
        try session.enqueue("42c")
        #expect(wakes.withLockedValue { $0 } == 1, "still woken from the drain: no second wake")
        #expect(session.nextWrite(socketWritable: false) == .stop)
        _ = session.close(reason: "the client is not reading")
        #expect(wakes.withLockedValue { $0 } == 2, "a close wakes a blocked writer")
        #expect(session.nextWrite(socketWritable: false) == .write(["42c"]), "once closed, the rest goes out whatever the socket holds")
        #expect(session.nextWrite(socketWritable: false) == .close("the client is not reading"))
        #expect(session.nextWrite(socketWritable: true) == .stop, "the close is asked for once")
        session.writerFinished()
        await session.waitUntilWriterFinished()
    }

    @Test("Closing an idle session wakes the writer for what is left, then the close with its reason")
    func closeAfterIdle() async throws {
        let session = self.session()
        let wakes = NIOLockedValueBox(0)
        session.useWriter { wakes.withLockedValue { $0 += 1 } }
        try session.enqueue("41")
        #expect(session.nextWrite(socketWritable: true) == .write(["41"]))
        #expect(session.nextWrite(socketWritable: true) == .stop)
        session.enqueueLast(["1"])
        _ = session.close(reason: "ping timeout")
        #expect(wakes.withLockedValue { $0 } == 2)
        #expect(session.nextWrite(socketWritable: true) == .write(["1"]), "the last packets are written")
        #expect(session.nextWrite(socketWritable: true) == .close("ping timeout"), "then the close")
        // Nothing wakes the writer any more, and whoever waits for the writer hears that it finished.
        #expect(throws: ChatError.self) { try session.enqueue("2") }
        session.writerFinished()
        await session.waitUntilWriterFinished()
        #expect(wakes.withLockedValue { $0 } == 2)
    }
}
