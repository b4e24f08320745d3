import Foundation
import Logging
import Synchronization
import WSClient

/// A minimal Socket.IO v5 client over a WebSocket (Engine.IO v4), cheap enough to drive chatd harder than a
/// Python client can: it answers pings, acknowledges `message:received`, and hands each raw event packet to
/// `onPacket` without decoding it.
final class SocketIOClient: Sendable {
    private struct State {
        var outbound: WebSocketOutboundWriter?
        var ready: CheckedContinuation<Void, any Error>?
        var acks: [UInt64: CheckedContinuation<String, Never>] = [:]
        var nextAck: UInt64 = 0
        var closed = false
    }

    let user: String
    private let state = Mutex(State())
    private let onPacket: @Sendable (String) -> Void

    private init(user: String, onPacket: @escaping @Sendable (String) -> Void) {
        self.user = user
        self.onPacket = onPacket
    }

    /// Connects and completes the Socket.IO CONNECT with `token`.
    static func connect(
        base: String,
        user: String,
        token: String,
        onPacket: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws -> SocketIOClient {
        let client = SocketIOClient(user: user, onPacket: onPacket)
        let url = base.replacingOccurrences(of: "http://", with: "ws://") + "/socket.io/?EIO=4&transport=websocket"
        let logger = {
            var logger = Logger(label: "chatd-load")
            logger.logLevel = .critical
            return logger
        }()
        try await withCheckedThrowingContinuation { (ready: CheckedContinuation<Void, any Error>) in
            client.state.withLock { $0.ready = ready }
            Task {
                do {
                    try await WebSocketClient.connect(
                        url: url,
                        configuration: .init(maxFrameSize: 1 << 24),
                        logger: logger
                    ) { inbound, outbound, _ in
                        client.state.withLock { $0.outbound = outbound }
                        for try await message in inbound.messages(maxSize: 1 << 24) {
                            guard case .text(let text) = message else { continue }
                            try await client.handle(text, token: token, outbound: outbound)
                        }
                    }
                } catch {
                    client.fail(error)
                }
                client.fail(LoadError("\(user): the connection closed"))
            }
        }
        return client
    }

    private func handle(_ text: String, token: String, outbound: WebSocketOutboundWriter) async throws {
        let bytes = text.utf8
        guard let first = bytes.first else { return }
        switch first {
        case UInt8(ascii: "0"):  // Engine.IO OPEN
            try await outbound.write(.text("40{\"token\":\"\(token)\"}"))
        case UInt8(ascii: "2"):  // ping
            try await outbound.write(.text("3"))
        case UInt8(ascii: "4"):
            let second = bytes.dropFirst().first
            if second == UInt8(ascii: "0") {
                let ready = self.state.withLock { state in defer { state.ready = nil }; return state.ready }
                ready?.resume()
            } else if second == UInt8(ascii: "4") {
                let ready = self.state.withLock { state in defer { state.ready = nil }; return state.ready }
                ready?.resume(throwing: LoadError("\(self.user): connection refused: \(text)"))
            } else if second == UInt8(ascii: "2") {
                // EVENT, with an ack id when the server wants one.
                let digits = bytes.dropFirst(2).prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
                self.onPacket(text)
                if !digits.isEmpty {
                    try await outbound.write(.text("43" + String(decoding: digits, as: UTF8.self) + "[]"))
                }
            } else if second == UInt8(ascii: "3") {
                let digits = bytes.dropFirst(2).prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
                if let id = UInt64(String(decoding: digits, as: UTF8.self)) {
                    let waiter = self.state.withLock { $0.acks.removeValue(forKey: id) }
                    waiter?.resume(returning: text)
                }
            }
        default:
            break
        }
    }

    private func fail(_ error: any Error) {
        let (ready, acks) = self.state.withLock { state in
            state.closed = true
            defer {
                state.ready = nil
                state.acks = [:]
            }
            return (state.ready, state.acks)
        }
        ready?.resume(throwing: error)
        for waiter in acks.values { waiter.resume(returning: "") }
    }

    /// Emits an event without asking for an ack.
    func emit(_ eventJSON: String) async throws {
        guard let outbound = self.state.withLock({ $0.outbound }) else { throw LoadError("\(self.user): not connected") }
        try await outbound.write(.text("42" + eventJSON))
    }

    /// Emits an event and waits for its ack; returns the raw ACK packet ("" if the connection closed).
    func call(_ eventJSON: String) async throws -> String {
        guard let outbound = self.state.withLock({ $0.outbound }) else { throw LoadError("\(self.user): not connected") }
        return await withCheckedContinuation { continuation in
            let id: UInt64? = self.state.withLock { state in
                guard !state.closed else { return nil }
                let id = state.nextAck
                state.nextAck += 1
                state.acks[id] = continuation
                return id
            }
            guard let id else {
                continuation.resume(returning: "")
                return
            }
            Task {
                do {
                    try await outbound.write(.text("42\(id)" + eventJSON))
                } catch {
                    self.state.withLock { $0.acks.removeValue(forKey: id) }?.resume(returning: "")
                }
            }
        }
    }

    /// Closes the WebSocket.
    func close() async {
        guard let outbound = self.state.withLock({ $0.outbound }) else { return }
        try? await outbound.close(.normalClosure, reason: nil)
    }
}

struct LoadError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
