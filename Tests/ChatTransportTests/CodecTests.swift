import ChatDomain
import ChatTransport
import Testing

/// Engine.IO v4 and Socket.IO v5 packet vectors, and malformed input that must give errors, never crashes.
@Suite("Socket.IO codec")
struct CodecTests {
    @Test("Engine.IO packet types 0 to 6 encode as their digit and decode back", arguments: EngineIOPacket.Kind.allCases)
    func engineIOTypes(kind: EngineIOPacket.Kind) throws {
        let packet = EngineIOPacket(kind, kind == .ping ? "probe" : "x")
        #expect(packet.encoded == "\(kind.rawValue)\(packet.text)")
        #expect(try EngineIOPacket.decode(Substring(packet.encoded)) == packet)
    }

    @Test("The handshake, a polling payload joined by \\u{1e}, and a binary packet as b<base64>")
    func engineIOVectors() throws {
        let open = #"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        #expect(try EngineIOPacket.decode(Substring(open)).kind == .open)
        let payload = "4hello\u{1e}2\u{1e}bAQID"
        let packets = try EngineIOPacket.decodePayload(payload)
        #expect(packets == [EngineIOPacket(.message, "hello"), EngineIOPacket(.ping), EngineIOPacket(binary: [1, 2, 3])])
        #expect(EngineIOPacket.encodePayload(packets) == payload)
        #expect(EngineIOPacket(binary: [0xff, 0xfe]).encoded == "b//4=")
        #expect(try EngineIOPacket.decode("b//4=").binary == [0xff, 0xfe])
    }

    @Test("Malformed Engine.IO input is an error", arguments: ["", "7", "x", "b!!!", "bAQI", "4a\u{1e}\u{1e}4b", "b=AAA"])
    func engineIOMalformed(input: String) {
        #expect(throws: CodecError.self) { try EngineIOPacket.decodePayload(input) }
    }

    @Test("Socket.IO vectors from the v5 protocol", arguments: [
        ("0", SocketIOPacket(.connect)),
        (#"0{"token":"t"}"#, SocketIOPacket(.connect, data: .object(["token": .string("t")]))),
        ("0/admin,", SocketIOPacket(.connect, namespace: "/admin")),
        ("0/admin", SocketIOPacket(.connect, namespace: "/admin")),
        ("1", SocketIOPacket(.disconnect)),
        (#"2["message:send",{"chatId":"c"}]"#, SocketIOPacket.event("message:send", [.object(["chatId": .string("c")])])),
        (#"212["user:reconnected"]"#, SocketIOPacket.event("user:reconnected", [], ackID: 12)),
        (#"2/admin,7["x"]"#, SocketIOPacket.event("x", [], namespace: "/admin", ackID: 7)),
        (#"35[{"ok":true}]"#, SocketIOPacket(.ack, ackID: 5, data: .array([.object(["ok": .bool(true)])]))),
        (#"4{"message":"unauthorized"}"#, SocketIOPacket(.connectError, data: .object(["message": .string("unauthorized")]))),
    ])
    func socketIOVectors(text: String, expected: SocketIOPacket) throws {
        let packet = try SocketIOPacket.decode(text)
        #expect(packet == expected)
        #expect(try SocketIOPacket.decode(packet.encoded) == expected, "encoding round-trips")
    }

    @Test("Event name and arguments")
    func eventAccessors() throws {
        let packet = try SocketIOPacket.decode(#"2["message:send",{"chatId":"c","content":"hi"},3]"#)
        #expect(packet.eventNameAndArguments?.name == "message:send")
        #expect(packet.eventNameAndArguments?.arguments.count == 2)
    }

    @Test("Malformed Socket.IO input is an error that says what was wrong", arguments: [
        ("", "empty"),
        ("9", "unknown"),
        ("x", "unknown"),
        (#"2{"a":1}"#, "EVENT"),
        (#"2[1,2]"#, "EVENT"),
        ("2[", "JSON"),
        (#"2["a""#, "JSON"),
        ("21234567890123456789[\"a\"]", "acknowledgement id"),
        (#"3["x"]"#, "ACK"),
        ("35{}", "ACK"),
        ("0[1]", "CONNECT"),
        (#"51-["a",{"_placeholder":true,"num":0}]"#, "binary"),
    ])
    func socketIOMalformed(text: String, reason: String) {
        do {
            _ = try SocketIOPacket.decode(text)
            Issue.record("'\(text)' decoded")
        } catch {
            #expect(error.message.contains(reason), "\(error.message)")
        }
    }
}
