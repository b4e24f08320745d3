import ChatDomain
import ChatScenarioKit
@testable import ChatTransport
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// What one anonymous or hostile peer can make the server hold, from outside: sessions, connections, buffers.
@Suite("Limits and abuse")
struct AbuseTests {
    /// A GET with headers; the status, the body and the response headers.
    static func get(_ url: String, headers: [String: String] = [:]) async throws -> (status: Int, text: String, headers: [AnyHashable: Any]) {
        var request = URLRequest(url: URL(string: url)!)
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        request.timeoutInterval = 10
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as? HTTPURLResponse
        return (http?.statusCode ?? 0, String(decoding: data, as: UTF8.self), http?.allHeaderFields ?? [:])
    }

    @Test("One address cannot hold more than its sessions, nor handshake faster than its rate; others still get in")
    func perAddressLimits() async throws {
        var socketIO = SocketIOConfiguration()
        socketIO.maxSessionsPerAddress = 20
        socketIO.handshakeRatePerAddress = RateLimit(rate: 1, burst: 30)
        // The test client connects from 127.0.0.1: as a trusted proxy, its X-Forwarded-For names the client.
        socketIO.trustedProxies = ["127.0.0.1", "::1"]
        try await withLiveServer(socketIO: socketIO) { live in
            let handshake = live.url + "/socket.io/?EIO=4&transport=polling"
            var statuses: [Int: Int] = [:]
            for _ in 0..<60 {
                let response = try await Self.get(handshake, headers: ["X-Forwarded-For": "198.51.100.7"])
                statuses[response.status, default: 0] += 1
            }
            #expect(statuses[200] == 20, "\(statuses)")
            #expect(statuses[429] == 40, "\(statuses)")
            #expect(live.server.sessionCount == 20)
            // A client at another address is unaffected, and so is a client whose spoofed header a proxy appended
            // to: the rightmost untrusted hop counts.
            var other = PollingClient(live)
            _ = try await other.open(headers: ["X-Forwarded-For": "203.0.113.9"])
            let reply = try await other.connectOpened(token: try await live.token(Harness.bob))
            #expect(reply.hasPrefix("40{"))
            let spoofed = try await Self.get(handshake, headers: ["X-Forwarded-For": "203.0.113.50, 198.51.100.7"])
            #expect(spoofed.status == 429)
            // Without a trusted proxy the header is ignored: every request is the peer's.
            #expect(live.logs.contains("Engine.IO handshake refused", level: .warning))
        }
        socketIO.trustedProxies = []
        socketIO.maxSessionsPerAddress = nil
        socketIO.handshakeRatePerAddress = RateLimit(rate: 1, burst: 3)
        try await withLiveServer(socketIO: socketIO) { live in
            let handshake = live.url + "/socket.io/?EIO=4&transport=polling"
            for index in 0..<3 {
                let response = try await Self.get(handshake, headers: ["X-Forwarded-For": "10.0.0.\(index)"])
                #expect(response.status == 200)
            }
            let refused = try await Self.get(handshake, headers: ["X-Forwarded-For": "10.0.0.99"])
            #expect(refused.status == 429, "X-Forwarded-For from an untrusted peer changes nothing")
            #expect((refused.headers["Retry-After"] as? String).flatMap(Int.init).map { $0 >= 1 } == true, "\(refused.headers)")
            #expect(refused.text.contains("too many handshakes"))
        }
    }

    @Test("A user may hold at most maxConnectionsPerUser connections; one more gets CONNECT_ERROR too_many_connections")
    func perUserConnections() async throws {
        var socketIO = SocketIOConfiguration()
        socketIO.maxConnectionsPerUser = 2
        try await withLiveServer(socketIO: socketIO) { live in
            let token = try await live.token(Harness.alice)
            var replies: [String] = []
            for _ in 0..<3 {
                var client = PollingClient(live)
                replies.append(try await client.connect(token: token))
            }
            #expect(replies[0].hasPrefix("40{") && replies[1].hasPrefix("40{"))
            #expect(replies[2].hasPrefix("44{") && replies[2].contains("too_many_connections"), "\(replies[2])")
            #expect(await live.service.connections(of: Harness.alice.id).count == 2)
            // Another user is not affected.
            var bob = PollingClient(live)
            #expect(try await bob.connect(token: try await live.token(Harness.bob)).hasPrefix("40{"))
        }
    }

    @Test("Past the connection cap a new connection is closed at once and the cap is logged; below it all is well")
    func connectionCap() async throws {
        var socketIO = SocketIOConfiguration()
        socketIO.maxHTTPConnections = 8
        socketIO.httpHeaderTimeout = .seconds(30)
        try await withLiveServer(socketIO: socketIO) { live in
            var opened: [any Channel] = []
            for _ in 0..<9 { opened.append(try await RawTCP.connect(port: live.port)) }
            let channels = opened
            // Connections are admitted on several event loops, so which one is refused is not fixed: exactly one.
            await eventually("one connection is refused") { channels.count { !$0.isActive } == 1 }
            #expect(live.logs.contains("HTTP connection limit reached; closing new connections", level: .warning))
            for channel in channels { try? await channel.close() }
            await eventually("the connections are released") { live.server.httpConnectionCount == 0 }
            let handshake = try await AbuseTests.get(live.url + "/socket.io/?EIO=4&transport=polling")
            #expect(handshake.status == 200)
        }
    }

    @Test("Half-sent request heads and silent connections are closed after the header timeout")
    func halfOpenConnections() async throws {
        var socketIO = SocketIOConfiguration()
        socketIO.httpHeaderTimeout = .milliseconds(800)
        try await withLiveServer(socketIO: socketIO) { live in
            var channels: [any Channel] = []
            for index in 0..<7 {
                let channel = try await RawTCP.connect(port: live.port)
                if index < 5 {
                    // On a loaded machine the deadline may pass before this write: then the channel is closed
                    // already, which is what the test wants to see.
                    try? await channel.writeAndFlush(ByteBuffer(string: "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n"))
                }
                channels.append(channel)
            }
            for channel in channels {
                #expect(try await RawTCP.closed(channel, within: .seconds(5)), "a half-open or silent connection is closed")
            }
            await eventually("the connection count drops") { live.server.httpConnectionCount == 0 }
            // A complete request on a fresh connection is served as usual.
            let handshake = try await AbuseTests.get(live.url + "/socket.io/?EIO=4&transport=polling")
            #expect(handshake.status == 200)
        }
    }

    @Test("Acknowledgements that time out are dropped from the socket's table: 20,000 unacknowledged deliveries stay bounded")
    func unansweredAcknowledgements() async throws {
        try await withLiveServer { live in
            var client = PollingClient(live)
            _ = try await client.connect(token: try await live.token(Harness.alice))
            let connection = try #require(await live.service.connections(of: Harness.alice.id).first)
            let session = try #require(live.server.session(of: connection))
            var largest = 0
            for index in 0..<20_000 {
                let acknowledgement = Acknowledgement()
                try live.server.emit(.userOnline(PresenceChange(userID: "u", timestamp: Date())), to: connection, acknowledgement: acknowledgement)
                // What the engine's deadline timer does to an acknowledgement that never comes.
                acknowledgement.fail(ChatError(.timeout, "the client did not acknowledge in time"))
                largest = max(largest, session.acknowledgementTableSize)
                if index.isMultiple(of: 1000) { _ = session.takeBuffered(maxBytes: .max) }
                // Let the other tests of the process run (this loop never suspends otherwise).
                if index.isMultiple(of: 200) { await Task.yield() }
            }
            #expect(largest <= 128, "the table held \(largest) entries")
            // A pending acknowledgement is kept and still completes when the client answers.
            let pending = Acknowledgement()
            try live.server.emit(.userOnline(PresenceChange(userID: "u", timestamp: Date())), to: connection, acknowledgement: pending)
            let id = try #require(session.takeBuffered(maxBytes: .max).last.flatMap { SocketIOServer.leadingAckID($0.dropFirst()) })
            try await client.post(["43\(id)[]"])
            await eventually("the client's ACK completes it") { pending.succeeded == true }
        }
    }

    @Test("A slow polling reader with a backlog larger than its buffer gets all of it, slowly, and is not cut off")
    func slowReaderDrain() async throws {
        var socketIO = SocketIOConfiguration()
        socketIO.maxPayload = 16 * 1024
        socketIO.maxBufferedBytes = 64 * 1024
        try await withLiveServer(socketIO: socketIO) { live in
            var alice = PollingClient(live)
            _ = try await alice.connect(token: try await live.token(Harness.alice))
            // bob is offline: 40 messages of 6 KB, 240 KB in all, four times bob's buffer.
            let body = String(repeating: "x", count: 6000)
            for index in 0..<40 {
                try await alice.post(["42[\"message:send\",{\"chatId\":\"chat-ab\",\"content\":\"\(index) \(body)\"}]"])
            }
            await eventually("all 40 stored") { live.store.messageCount == 40 }
            var bob = PollingClient(live)
            _ = try await bob.connect(token: try await live.token(Harness.bob))
            try await bob.post(["421[\"user:reconnected\"]"])
            var received: [String] = []
            var reconnectAck: String?
            for _ in 0..<400 where reconnectAck == nil {
                let (status, packets) = try await bob.poll()
                #expect(status == 200, "bob's session stays open: \(packets)")
                guard status == 200 else { break }
                var answers: [String] = []
                for packet in packets {
                    if packet == "2" { answers.append("3") }
                    if packet.hasPrefix("42"), packet.contains("message:received"), let id = SocketIOServer.leadingAckID(packet.dropFirst()) {
                        received.append(packet)
                        answers.append("43\(id)[]")
                    }
                    if packet.hasPrefix("431[") { reconnectAck = packet }
                }
                if !answers.isEmpty { try await bob.post(answers) }
                // A slow reader.
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(received.count == 40)
            #expect(reconnectAck == "431[{\"delivered\":40}]")
            #expect(!live.logs.all.contains { $0.metadata["engineio.reason"]?.contains("outbound buffer full") == true })
        }
    }

    @Test("A malformed packet that asked for an acknowledgement gets its error as the acknowledgement, then the close")
    func malformedPacketWithAck() async throws {
        try await withLiveServer { live in
            var alice = PollingClient(live)
            _ = try await alice.connect(token: try await live.token(Harness.alice))
            let pending = try await alice.pendingPoll(live)
            try await alice.post(["427[\"message:send\",{\"chatId\":"])
            let answer = try await pending.value
            #expect(answer.status == 200)
            #expect(answer.packets.first { $0.hasPrefix("42[\"message:error\"") }?.contains("malformed packet") == true, "\(answer)")
            let ack = answer.packets.first { $0.hasPrefix("437[") } ?? ""
            #expect(ack.contains("\"code\":\"bad_request\"") && ack.contains("malformed packet"), "\(answer)")
            #expect(answer.packets.last == "1", "the last packet is the Engine.IO CLOSE: \(answer)")
            #expect(try await alice.poll().status == 400, "the session is closed")
        }
    }

    @Test("Client-supplied ids and names are escaped and cut in logs and errors; a huge chat id is not echoed back")
    func logInjection() async throws {
        try await withLiveServer { live in
            var alice = PollingClient(live)
            _ = try await alice.connect(token: try await live.token(Harness.alice))
            let forged = "x\\n[critical] FORGED line"
            let huge = String(repeating: "z", count: 900_000)
            try await alice.post([
                "421[\"message:send\",{\"chatId\":\"\(forged)\",\"content\":\"hi\"}]",
                "422[\"message:send\",{\"chatId\":\"\(huge)\",\"content\":\"hi\"}]",
                "423[\"evil\\nname\",{}]",
            ])
            var answers: [String] = []
            for _ in 0..<10 where answers.count < 3 {
                answers += try await alice.poll().packets.filter { $0.hasPrefix("43") }
            }
            #expect(answers.count == 3)
            #expect(answers.allSatisfy { $0.utf8.count < 1_000 }, "no answer echoes the huge id: \(answers.map(\.utf8.count))")
            #expect(answers.contains { $0.contains("chat_not_found") && $0.contains(#"x\\n[critical]"#) })
            for entry in live.logs.all {
                let text = ([entry.message] + entry.metadata.map { "\($0.key)=\($0.value)" }).joined(separator: " ")
                #expect(!text.contains("\n"), "a log line holds a raw newline: \(text.prefix(200))")
                #expect(text.utf8.count < 2_000, "a log line holds \(text.utf8.count) bytes")
            }
            #expect(live.logs.contains("Message rejected"))
            // Session ids are bearer secrets over polling: never in a log line.
            #expect(!live.logs.all.contains { entry in entry.metadata.values.contains { $0.contains(alice.sid) } })
        }
    }
}

/// A raw TCP peer, for connections that misbehave below HTTP.
enum RawTCP {
    static func connect(port: Int) async throws -> any Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
    }

    /// Whether the server closed `channel` within `timeout`.
    static func closed(_ channel: any Channel, within timeout: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if !channel.isActive { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        let closed = !channel.isActive
        try? await channel.close()
        return closed
    }
}

/// The HTTP API's privacy controls and caps, in-process.
@Suite("Privacy: leaving chats and blocking users")
struct PrivacyAPITests {
    static func call(_ live: LiveServer, _ method: String, _ path: String, token: String, body: String? = nil) async throws -> (status: Int, json: JSONValue?) {
        var request = URLRequest(url: URL(string: live.url + path)!)
        request.httpMethod = method
        request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        request.httpBody = body.map { Data($0.utf8) }
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, try? JSONDecoder().decode(JSONValue.self, from: data))
    }

    @Test("A user leaves a chat they were put in, and blocks its creator: no more messages or presence from them")
    func leaveAndBlock() async throws {
        try await withLiveServer { live in
            let alice = try await live.token(Harness.alice)
            let bob = try await live.token(Harness.bob)
            // alice puts bob (and carol) in a chat bob never asked for.
            let created = try await Self.call(live, "POST", "/api/chats", token: alice, body: #"{"participants": ["bob", "carol"]}"#)
            #expect(created.status == 201)
            guard case .object(let chat)? = created.json, case .string(let chatID)? = chat["_id"] else {
                Issue.record("no chat id: \(String(describing: created.json))")
                return
            }
            let left = try await Self.call(live, "POST", "/api/chats/\(chatID)/leave", token: bob)
            #expect(left.status == 200)
            #expect(left.json?.participants == ["alice", "carol"])
            #expect(try await Self.call(live, "POST", "/api/chats/\(chatID)/leave", token: bob).status == 403, "only once")
            #expect(try await Self.call(live, "GET", "/api/chats/\(chatID)/messages", token: bob).status == 403)
            // bob blocks alice: her direct messages are refused.
            #expect(try await Self.call(live, "POST", "/api/users/me/blocks/alice", token: bob).status == 204)
            #expect(try await Self.call(live, "GET", "/api/users/me/blocks", token: bob).json == .object(["blocked": .array([.string("alice")])]))
            var aliceClient = PollingClient(live)
            _ = try await aliceClient.connect(token: alice)
            try await aliceClient.post(["421[\"message:send\",{\"chatId\":\"chat-ab\",\"content\":\"hi\"}]"])
            let answer = try await aliceClient.next { $0.hasPrefix("431[") }
            #expect(answer.contains("\"code\":\"blocked\""), "\(answer)")
            #expect(try await Self.call(live, "POST", "/api/users/me/blocks/bob", token: bob).status == 400, "not oneself")
            #expect(try await Self.call(live, "DELETE", "/api/users/me/blocks/alice", token: bob).status == 204)
            try await aliceClient.post(["422[\"message:send\",{\"chatId\":\"chat-ab\",\"content\":\"hi again\"}]"])
            #expect(try await aliceClient.next { $0.hasPrefix("432[") }.contains("messageId"))
        }
    }

    @Test("With acceptance required, a chat reaches an invited user, and shares their presence, only once they accept")
    func acceptance() async throws {
        var chat = ChatServiceConfiguration()
        chat.requireChatAcceptance = true
        try await withLiveServer(chat: chat) { live in
            let alice = try await live.token(Harness.alice)
            let carol = try await live.token(Harness.carol)
            let created = try await Self.call(live, "POST", "/api/chats", token: alice, body: #"{"participants": ["carol"]}"#)
            guard case .object(let chat)? = created.json, case .string(let chatID)? = chat["_id"] else {
                Issue.record("no chat: \(String(describing: created.json))")
                return
            }
            #expect(chat["invited"] == .array([.string("carol")]))
            var carolClient = PollingClient(live)
            _ = try await carolClient.connect(token: carol)
            var aliceClient = PollingClient(live)
            _ = try await aliceClient.connect(token: alice)
            try await aliceClient.post(["421[\"message:send\",{\"chatId\":\"\(chatID)\",\"content\":\"before\"}]"])
            #expect(try await aliceClient.next { $0.hasPrefix("431[") }.contains("messageId"))
            // carol may not post before accepting, and was not sent the message.
            try await carolClient.post(["421[\"message:send\",{\"chatId\":\"\(chatID)\",\"content\":\"hi\"}]"])
            let refused = try await carolClient.next { $0.hasPrefix("431[") }
            #expect(refused.contains("not_a_participant") && refused.contains("accept"), "\(refused)")
            #expect(await live.service.currentStatistics().queued == 0, "nothing queued or pending for carol")
            let accepted = try await Self.call(live, "POST", "/api/chats/\(chatID)/accept", token: carol)
            #expect(accepted.status == 200)
            #expect(accepted.json.flatMap { json -> JSONValue? in if case .object(let object) = json { object["invited"] } else { nil } } == .array([]))
            try await aliceClient.post(["422[\"message:send\",{\"chatId\":\"\(chatID)\",\"content\":\"after\"}]"])
            let received = try await carolClient.next { $0.contains("message:received") }
            #expect(received.contains("\"after\"") && !received.contains("\"before\""))
        }
    }

    @Test("Chat size and chats per user are capped")
    func caps() async throws {
        var chat = ChatServiceConfiguration()
        chat.maxChatParticipants = 3
        chat.maxChatsPerUser = 3
        try await withLiveServer(chat: chat) { live in
            let dave = try await live.token(Harness.dave)
            let big = try await Self.call(live, "POST", "/api/chats", token: dave, body: #"{"participants": ["a", "b", "c"]}"#)
            #expect(big.status == 400)
            // dave is in the standard group chat already: two more, then no more.
            for _ in 0..<2 {
                #expect(try await Self.call(live, "POST", "/api/chats", token: dave, body: #"{"participants": ["x"]}"#).status == 201)
            }
            let refused = try await Self.call(live, "POST", "/api/chats", token: dave, body: #"{"participants": ["x"]}"#)
            #expect(refused.status == 429)
            #expect(refused.json?.errorCode == "too_many_chats")
            let control = try await Self.call(live, "POST", "/api/chats", token: try await live.token(Harness.carol), body: #"{"participants": ["x\ny"]}"#)
            #expect(control.status == 400, "a participant id with a control character")
        }
    }
}

extension JSONValue {
    fileprivate var participants: [String]? {
        guard case .object(let object) = self, case .array(let values)? = object["participants"] else { return nil }
        return values.compactMap { if case .string(let value) = $0 { value } else { nil } }
    }

    fileprivate var errorCode: String? {
        guard case .object(let object) = self, case .object(let error)? = object["error"], case .string(let code)? = error["code"] else { return nil }
        return code
    }
}
