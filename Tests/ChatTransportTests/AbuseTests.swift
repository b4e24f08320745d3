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

    @Test("Half-sent request heads are closed after the header timeout, and the connection cap holds and is logged")
    func halfOpenConnections() async throws {
        var socketIO = SocketIOConfiguration()
        socketIO.httpHeaderTimeout = .milliseconds(400)
        socketIO.maxHTTPConnections = 8
        try await withLiveServer(socketIO: socketIO) { live in
            // Five peers send half a head and stop.
            var halfOpen: [any Channel] = []
            for _ in 0..<5 {
                let channel = try await RawTCP.connect(port: live.port)
                try await channel.writeAndFlush(ByteBuffer(string: "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n"))
                halfOpen.append(channel)
            }
            // The cap: 5 open plus 3 more fill it; the ninth is closed at once.
            var idle: [any Channel] = []
            for _ in 0..<3 { idle.append(try await RawTCP.connect(port: live.port)) }
            try await Task.sleep(for: .milliseconds(50))
            let ninth = try await RawTCP.connect(port: live.port)
            #expect(try await RawTCP.closed(ninth, within: .seconds(2)), "the connection over the cap is closed")
            #expect(live.logs.contains("HTTP connection limit reached; closing new connections", level: .warning))
            // Every half-open and idle connection is closed by the header timeout.
            for channel in halfOpen + idle {
                #expect(try await RawTCP.closed(channel, within: .seconds(3)), "a half-open connection is closed")
            }
            // And the server answers again.
            await eventually("the connection count drops") { live.server.httpConnectionCount == 0 }
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
