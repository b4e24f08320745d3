import ChatDomain
@testable import ChatTransport
import NIOConcurrencyHelpers
import Testing

/// The WebSocket writer's life: started by the first packet, ended by an empty buffer, started again for the
/// close, so an idle WebSocket holds no writer and still gets every packet and its close.
@Suite("WebSocket writer lifecycle")
struct EngineSessionWriterTests {
    private func session() -> EngineSession {
        EngineSession(
            id: "s", transport: .websocket, bearerToken: nil, pingInterval: .seconds(25), maxBufferedBytes: 1_000_000,
            clock: ManualMonotonicClock()
        )
    }

    @Test("A packet starts one writer; it writes in order, ends when the buffer is empty, and the next packet starts another")
    func startsAndEnds() throws {
        let session = self.session()
        let starts = NIOLockedValueBox(0)
        session.useWriter {
            starts.withLockedValue { $0 += 1 }
            return Task {}
        }
        #expect(starts.withLockedValue { $0 } == 0, "nothing to write: no writer")
        try session.enqueue("2")
        try session.enqueue("3")
        #expect(starts.withLockedValue { $0 } == 1, "one writer for both packets")
        guard case .write(let packets) = session.nextWrite() else { Issue.record("the writer has packets to write"); return }
        #expect(packets == ["2", "3"])
        guard case .idle = session.nextWrite() else { Issue.record("an empty buffer ends the writer"); return }
        try session.enqueue("4")
        #expect(starts.withLockedValue { $0 } == 2, "the next packet starts another writer")
    }

    @Test("Closing an idle session starts a writer that sends what is left, then the close with its reason")
    func closeAfterIdle() async throws {
        let session = self.session()
        let starts = NIOLockedValueBox(0)
        session.useWriter {
            starts.withLockedValue { $0 += 1 }
            return Task {}
        }
        try session.enqueue("41")
        guard case .write = session.nextWrite(), case .idle = session.nextWrite() else { Issue.record("first writer"); return }
        session.enqueueLast(["1"])
        _ = session.close(reason: "ping timeout")
        #expect(starts.withLockedValue { $0 } == 2)
        guard case .write(let last) = session.nextWrite() else { Issue.record("the last packets are written"); return }
        #expect(last == ["1"])
        guard case .close(let reason) = session.nextWrite() else { Issue.record("then the close"); return }
        #expect(reason == "ping timeout")
        // Nothing starts a writer any more, and whoever waits for the writer hears that it finished.
        #expect(throws: ChatError.self) { try session.enqueue("2") }
        session.writerFinished()
        await session.waitUntilWriterFinished()
        #expect(starts.withLockedValue { $0 } == 2)
    }
}
