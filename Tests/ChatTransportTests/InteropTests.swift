import ChatDomain
import ChatScenarioKit
import ChatTransport
import Foundation
import Testing

/// The stock python-socketio client (PyPI) against the server: every transport, authentication, the product's
/// events, and clients that misbehave.
@Suite("python-socketio interoperability", .serialized)
struct InteropTests {
    static let transports: [(String, [JSONValue]?)] = [
        ("websocket", [.string("websocket")]),
        ("polling", [.string("polling")]),
        ("polling then upgrade", nil),
    ]

    private func config(_ live: LiveServer, _ extra: [String: JSONValue] = [:]) async throws -> [String: JSONValue] {
        var config: [String: JSONValue] = [
            "url": .string(live.url),
            "tokens": .object(try await live.tokens().mapValues { .string($0) }),
            "chat": .string(Harness.directChat.rawValue),
        ]
        config.merge(extra) { $1 }
        return config
    }

    @Test("Two users exchange messages with and without acks", arguments: [0, 1, 2])
    func exchange(transport index: Int) async throws {
        guard try await PythonClient.available() else { return }
        let (name, transports) = Self.transports[index]
        try await withLiveServer { live in
            var extra: [String: JSONValue] = [:]
            if let transports { extra["transports"] = .array(transports) }
            let outcome = try await PythonClient.run("exchange", config: try await self.config(live, extra))
            #expect(outcome.succeeded, "\(name): \(outcome.report)")
            // The transport the clients ended on: polling stays polling; the default upgrades to WebSocket.
            let expected: JSONValue = .string(name == "polling" ? "polling" : "websocket")
            #expect(outcome.summary["transports"] == .array([expected, expected]), "\(name): \(outcome.stdout)")
            // The acknowledged message is stored, and bob's delivery was recorded.
            guard case .string(let id)? = outcome.summary["messageId"], let messageID = MessageID(hex: id) else {
                Issue.record("no messageId in \(outcome.stdout)")
                return
            }
            let stored = try await live.store.message(messageID)
            #expect(stored?.content == "hello bob")
            await eventually("bob's delivery to be recorded") {
                (try? await live.store.message(messageID))?.readBy.contains { $0.userID == Harness.bob.id } == true
            }
        }
    }

    @Test("The exact bytes that once crashed the server, over polling and WebSocket, are refused; it keeps serving")
    func crashBytes() async throws {
        guard try await PythonClient.available() else { return }
        try await withLiveServer { live in
            let outcome = try await PythonClient.run("crash-bytes", config: try await self.config(live))
            #expect(outcome.succeeded, "\(outcome.report)")
            #expect(live.logs.count(of: "Malformed packet; closing the session") + live.logs.count(of: "Malformed Engine.IO payload; closing the session") >= 5)
        }
    }

    @Test("Over WebSocket a packet that breaks the protocol closes the session after saying why; application errors keep it")
    func malformedClosesWebSocket() async throws {
        guard try await PythonClient.available() else { return }
        try await withLiveServer { live in
            let outcome = try await PythonClient.run("malformed", config: try await self.config(live))
            #expect(outcome.succeeded, "\(outcome.report)")
            #expect(live.logs.count(of: "Malformed packet; closing the session") == 12)
            #expect(outcome.summary["applicationAcks"] == .number(3))
            await eventually("every session to be gone") { live.server.sessionCount == 0 }
        }
    }

    @Test("The official Engine.IO v4 and Socket.IO v5 test suites' cases, as they apply to chatd, all pass")
    func officialProtocolSuites() async throws {
        guard try await PythonClient.available() else { return }
        // The official suites expect these heartbeat settings and the default maxPayload.
        var socketIO = SocketIOConfiguration()
        socketIO.pingInterval = .milliseconds(300)
        socketIO.pingTimeout = .milliseconds(200)
        let maxPayload = socketIO.maxPayload
        try await withLiveServer(socketIO: socketIO) { live in
            let config = try await self.config(live, ["maxPayload": .number(Double(maxPayload))])
            let outcome = try await PythonClient.run("protocol-suites", config: config, timeout: .seconds(120))
            #expect(outcome.succeeded, "\(outcome.report)")
            let cases = outcome.summary["cases"]
            #expect(cases == .number(25) && outcome.summary["passed"] == cases, "\(outcome.stdout)")
        }
    }

    @Test("Upgrade edges: the probe's noop goes to the pending poll only; a second WebSocket is accepted and closed")
    func upgradeEdges() async throws {
        guard try await PythonClient.available() else { return }
        try await withLiveServer { live in
            let outcome = try await PythonClient.run("upgrade-edges", config: try await self.config(live))
            #expect(outcome.succeeded, "\(outcome.report)")
            #expect(outcome.summary["pollAnswer"] == .string("6"))
            #expect(outcome.summary["getAfterUpgrade"] == .number(400))
        }
    }

    @Test("Missing, malformed, forged and expired tokens get CONNECT_ERROR unauthorized with a reason code")
    func authenticationFailures() async throws {
        guard try await PythonClient.available() else { return }
        try await withLiveServer { live in
            let forger = try await TokenAuthenticator(secret: "another-secret-0123456789abcdef-0123")
            let forged = try await forger.token(for: Harness.alice, lifetime: .seconds(3600))
            let expired = try await live.authenticator.token(
                for: Harness.alice,
                lifetime: .seconds(60),
                now: Date().addingTimeInterval(-3600)
            )
            let badTokens: [String: JSONValue] = [
                "missing": .string(""),
                "malformed": .string("not-a-jwt"),
                "forged": .string(forged),
                "expired": .string(expired),
            ]
            let outcome = try await PythonClient.run("auth", config: try await self.config(live, ["badTokens": .object(badTokens)]))
            #expect(outcome.succeeded, "\(outcome.report)")
            #expect(outcome.summary["missing"] == .string("missing_token"))
            #expect(outcome.summary["malformed"] == .string("malformed_token"))
            #expect(outcome.summary["forged"] == .string("invalid_signature"))
            #expect(outcome.summary["expired"] == .string("token_expired"))
            #expect(outcome.summary["bearer_header"] == .string("connected"))
            // None of the refused sockets reached the engine: only the bearer-header connection did.
            #expect(live.logs.count(of: "Socket.IO connection refused") == 4)
            #expect(live.logs.count(of: "User connected") == 1)
        }
    }

    @Test("Unknown events, non-object payloads and wrong types get message:error bad_request; the socket stays up")
    func badRequests() async throws {
        guard try await PythonClient.available() else { return }
        try await withLiveServer { live in
            let outcome = try await PythonClient.run("bad-requests", config: try await self.config(live))
            #expect(outcome.succeeded, "\(outcome.report)")
            let codes: [JSONValue] = ["bad_request", "bad_request", "bad_request", "bad_request", "bad_request", "chat_not_found", "empty_content"]
                .map { .string($0) }
            #expect(outcome.summary["codes"] == .array(codes), "\(outcome.stdout)")
            guard case .array(let messages)? = outcome.summary["messages"] else { return }
            // The messages say what was wrong.
            #expect(messages[0] == .string("unknown event 'no:such:event'; this server accepts message:send, message:read, typing:start, typing:stop and user:reconnected"))
            #expect(messages[2] == .string("'chatId' must be a string"))
            #expect(messages[3] == .string("message:send needs 'content'"))
        }
    }

    @Test("user:reconnected delivers what was queued while the client was away", arguments: [0, 1, 2])
    func reconnect(transport index: Int) async throws {
        guard try await PythonClient.available() else { return }
        let (name, transports) = Self.transports[index]
        try await withLiveServer { live in
            var extra: [String: JSONValue] = [:]
            if let transports { extra["transports"] = .array(transports) }
            let outcome = try await PythonClient.run("reconnect", config: try await self.config(live, extra))
            if !outcome.succeeded {
                // The server's side of the story, for whoever looks at the failure (a polling client's lost
                // DISCONNECT once made this fail now and then; see Recorder.disconnect in interop.py).
                for entry in live.logs.all { print("server log: \(entry.level) \(entry.message) \(entry.metadata)") }
            }
            #expect(outcome.succeeded, "\(name): \(outcome.report)")
            #expect(outcome.summary["delivered"] == .number(3))
            // Acknowledged after delivery: the queue is empty and nothing is pending for bob.
            let depth = try await live.queue.depth(for: Harness.bob.id)
            #expect(depth.ready == 0 && depth.unacknowledged == 0)
            await eventually("bob's three deliveries to be recorded") {
                let pending = try? await live.store.pendingMessages(for: Harness.bob.id, createdSince: .distantPast, afterID: nil, limit: 10)
                return pending?.isEmpty == true
            }
        }
    }

    @Test("A client that stops answering pings is closed, and the engine sees it leave")
    func pingTimeout() async throws {
        guard try await PythonClient.available() else { return }
        var socketIO = SocketIOConfiguration()
        socketIO.pingInterval = .milliseconds(300)
        socketIO.pingTimeout = .milliseconds(300)
        try await withLiveServer(socketIO: socketIO) { live in
            let outcome = try await PythonClient.run("ping-timeout", config: try await self.config(live))
            #expect(outcome.succeeded, "\(outcome.report)")
            await eventually("the session to be gone") { live.server.sessionCount == 0 }
            await eventually("the engine to forget bob's connection") { await live.service.connections(of: Harness.bob.id).isEmpty }
            #expect(live.logs.contains("Engine.IO session closed"))
        }
    }

    @Test("A frame or POST over maxPayload closes only that session")
    func oversizedPayload() async throws {
        guard try await PythonClient.available() else { return }
        var socketIO = SocketIOConfiguration()
        socketIO.maxPayload = 100_000
        try await withLiveServer(socketIO: socketIO) { live in
            let outcome = try await PythonClient.run("oversized", config: try await self.config(live, ["maxPayload": .number(100_000)]))
            #expect(outcome.succeeded, "\(outcome.report)")
            #expect(outcome.summary["postStatus"] == .number(413))
            #expect(outcome.summary["closeCode"] == .number(1009))
            #expect(outcome.summary["utf8CloseCode"] == .number(1007))
            // Nothing from the oversized packets was stored; the bystander's message was.
            let history = try await live.store.history(of: Harness.directChat, before: nil, limit: 10)
            #expect(history.map(\.content) == ["unaffected"])
        }
    }
}

/// Misbehaving clients with 10,000 packets.
@Suite("Hostile input")
struct HostileInputTests {
    @Test("10,000 random and mutated packets: no crash, bystanders unaffected, memory bounded")
    func hostilePackets() async throws {
        guard try await PythonClient.available() else { return }
        try await withLiveServer { live in
            let before = Self.residentBytes()
            var config: [String: JSONValue] = [
                "url": .string(live.url),
                "tokens": .object(try await live.tokens().mapValues { .string($0) }),
                "chat": .string(Harness.directChat.rawValue),
                "packets": .number(10_000),
                "seed": .number(Double(UInt16.random(in: 1...UInt16.max))),
            ]
            config["chat"] = .string(Harness.directChat.rawValue)
            let outcome = try await PythonClient.run("hostile", config: config, timeout: .seconds(240))
            #expect(outcome.succeeded, "\(outcome.report)")
            #expect(outcome.summary["sent"] == .number(10_000))
            // The packets reached the server: each was refused with a log line, and each that broke the protocol
            // closed its session (the attacker came back). Packets sent into a session the server was closing are
            // not read, so not every one of the 10,000 is counted; how many depends on the machine's load (the
            // client syncs with the server every 300 packets to bound it): about 2,800 here, 1,881 once in CI.
            let refused = live.logs.count(of: "Client event refused") + live.logs.count(of: "Unsupported packet refused")
            let closed = live.logs.count(of: "Malformed packet; closing the session")
            #expect(refused + closed > 1_000, "only \(refused) refusals and \(closed) closes for 10,000 packets; \(outcome.stdout)")
            #expect(closed > 500, "\(closed) sessions closed for breaking the protocol")
            // Every close an attacker saw was the server's, for a protocol violation it logged, or one the attacker
            // asked for (an Engine.IO CLOSE) or made (a probe left unanswered); the attackers came back after them.
            if case .number(let reopened)? = outcome.summary["reopened"],
                case .number(let unanswered)? = outcome.summary["probesUnanswered"],
                case .number(let closeRequests)? = outcome.summary["closeRequests"]
            {
                #expect(
                    Int(reopened) <= closed + Int(closeRequests) + Int(unanswered),
                    "the attackers saw \(Int(reopened)) closes; the server logged \(closed), the attackers asked for \(Int(closeRequests))"
                )
                #expect(Int(reopened) >= closed / 2, "the attackers came back after \(Int(reopened)) of \(closed) closes")
            } else {
                Issue.record("the hostile client's summary lacks its counts: \(outcome.stdout)")
            }
            // Every misbehaving session is closed again, nothing is left behind.
            await eventually("the attackers' sessions to close") { live.server.sessionCount == 0 }
            let after = Self.residentBytes()
            #expect(after - before < 64 * 1024 * 1024, "resident memory grew by \((after - before) / 1024) KiB")
        }
    }

    /// This process's resident set size, from /proc/self/statm.
    static func residentBytes() -> Int {
        guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = statm.split(separator: " ")
        return (fields.count > 1 ? Int(fields[1]) ?? 0 : 0) * 4096
    }
}
