import ChatDomain
import ChatScenarioKit
@testable import ChatTransport
import Foundation
import Testing

/// A connection's `message:send`s in flight together while the store writes: bounded, and still in order.
@Suite("Sends in flight")
struct PipelinedSendTests {
    @Test("While the store holds inserts, one connection has maxSendsInFlight sends waiting, not more; released, all are answered and arrive in the order sent")
    func windowAndOrder() async throws {
        try await withLiveServer { live in
            let alice = try await RawWebSocketClient.connect(port: live.port, token: live.token(Harness.alice))
            let bob = try await RawWebSocketClient.connect(port: live.port, token: live.token(Harness.bob))
            defer {
                alice.close()
                bob.close()
            }
            live.store.hold(.inserts)
            for number in 0..<20 {
                try await alice.send(#"42\#(number)["message:send",{"chatId":"chat-ab","content":"m\#(number)"}]"#)
            }
            await eventually("16 sends wait for the store") { live.store.heldCount(.inserts) == 16 }
            try await Task.sleep(for: .milliseconds(200))
            #expect(live.store.heldCount(.inserts) == 16, "the window holds the rest back")
            live.store.release(.inserts)

            for number in 0..<20 { try await alice.waitFor("43\(number)[{") }
            try await bob.waitFor(#""content":"m19""#)
            let contents = Self.matches(of: #""content":"(m\d+)""#, in: bob.received.withLockedValue { $0 })
            #expect(contents == (0..<20).map { "m\($0)" }, "bob receives them in the order alice sent them")
            // Each acknowledgement names its message: ids follow the order sent, whatever order the answers came in.
            let acknowledged = alice.received.withLockedValue { $0 }
            let ids = (0..<20).map { number in Self.matches(of: #"43\#(number)\[\{"messageId":"([0-9a-f]{24})""#, in: acknowledged).first ?? "" }
            #expect(!ids.contains(""), "every ack carries its messageId")
            #expect(ids == ids.sorted(), "ids follow the order sent")
        }
    }

    @Test("With maxSendsInFlight 1 a connection's next send waits for the one before to be stored")
    func oneAtATime() async throws {
        var socketIO = SocketIOConfiguration()
        socketIO.maxSendsInFlight = 1
        try await withLiveServer(socketIO: socketIO) { live in
            let alice = try await RawWebSocketClient.connect(port: live.port, token: live.token(Harness.alice))
            defer { alice.close() }
            live.store.hold(.inserts)
            for number in 0..<3 {
                try await alice.send(#"42\#(number)["message:send",{"chatId":"chat-ab","content":"m\#(number)"}]"#)
            }
            await eventually("the first send waits for the store") { live.store.heldCount(.inserts) == 1 }
            try await Task.sleep(for: .milliseconds(200))
            #expect(live.store.heldCount(.inserts) == 1)
            live.store.release(.inserts)
            for number in 0..<3 { try await alice.waitFor("43\(number)[{") }
        }
    }

    static func matches(of pattern: String, in text: String) -> [String] {
        let expression = try! NSRegularExpression(pattern: pattern)
        return expression.matches(in: text, range: NSRange(text.startIndex..., in: text)).compactMap { match in
            Range(match.range(at: 1), in: text).map { String(text[$0]) }
        }
    }
}
