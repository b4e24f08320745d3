public import ChatDomain
import Foundation
import Logging

extension SocketIOServer {
    /// Handles one Engine.IO packet a client sent on `session` (over either transport).
    func receive(_ packet: EngineIOPacket, on session: EngineSession) async {
        switch packet.kind {
        case .message:
            if packet.binary != nil {
                // Well-formed, but not something chatd takes: the client is told and stays connected.
                self.reject(on: session, CodecError("binary messages are not supported; send JSON text"))
            } else {
                await self.receiveSocketIO(packet.text, on: session)
            }
        case .pong:
            session.pongReceived(pingInterval: self.configuration.pingInterval)
        case .ping:
            try? session.enqueue(EngineIOPacket(.pong, packet.text).encoded)
        case .close:
            // As the reference server does: a GET still waiting is answered with a noop, then the session ends.
            session.answerPendingPoll(with: EngineIOPacket(.noop).encoded)
            self.closeSession(session, reason: "client closed", notifyClient: false)
        case .noop, .upgrade:
            break
        case .open:
            self.protocolViolation(on: session, CodecError("clients may not send Engine.IO OPEN packets"))
        }
    }

    private func receiveSocketIO(_ text: String, on session: EngineSession) async {
        // The hottest path: a client's ACK of `message:received` (`3<id>[...]`); its data is not used.
        if let ackID = Self.fastAck(text), session.clientAcknowledged(ackID) { return }
        // The hot path: a well-formed `message:send` is decoded in one pass; anything else (including every
        // malformed variant) takes the general path below, which says what is wrong.
        if let (ackID, request) = Self.fastSend(text), let socket = session.socket {
            await self.send(request, ackID: ackID, socket: socket, session: session, service: self.chatService)
            return
        }
        // Binary packets are well-formed Socket.IO that chatd does not take: refused, the connection stays.
        if let type = text.utf8.first, type == UInt8(ascii: "5") || type == UInt8(ascii: "6") {
            self.reject(on: session, CodecError("binary Socket.IO packets are not supported; send JSON"), ackID: nil)
            return
        }
        let packet: SocketIOPacket
        do {
            packet = try SocketIOPacket.decode(text)
        } catch {
            // A packet that does not parse breaks the protocol: the session cannot be trusted to be in step.
            self.protocolViolation(on: session, error, ackID: Self.leadingAckID(Substring(text)))
            return
        }
        // Until the session has connected, CONNECT is the only Socket.IO packet a client may send.
        if packet.kind != .connect, session.socket == nil {
            self.protocolViolation(on: session, CodecError("the first Socket.IO packet must be a CONNECT (type 0), not type \(packet.kind.rawValue)"))
            return
        }
        guard packet.namespace == "/" else {
            self.logger.notice(
                "Socket.IO packet for an unknown namespace",
                metadata: ["engineio.session": "\(session.logID)", "socketio.namespace": "\(LogSafe.value(packet.namespace))"]
            )
            if packet.kind == .connect {
                let error = SocketIOPacket(.connectError, namespace: packet.namespace, data: .object(["message": .string("Invalid namespace")]))
                try? session.enqueue(EngineIOPacket(.message, error.encoded).encoded)
            }
            return
        }
        switch packet.kind {
        case .connect:
            // Once per session, and deep (token verification, the engine's registration): in a task of its own, the
            // async frames it needs are freed when it ends. On the reader task they would stay allocated for the
            // connection's whole life (the task's stack allocator keeps its slabs): ~3 KB per idle socket.
            await Task { await self.connect(packet, on: session) }.value
        case .disconnect:
            // The engine hears of it before the next packet is read (a client that reconnects at once must not
            // find its old connection still registered), then the session ends: chatd serves one namespace, and
            // leaving it ends the session, as the reference server does.
            if let socket = session.detach() {
                self.unregister(socket)
                if socket.engineKnows { await self.chatService.disconnect(socket.connection) }
            }
            self.closeSession(session, reason: "client disconnected", notifyClient: true)
        case .event:
            await self.receiveEvent(packet, on: session)
        case .ack:
            if let id = packet.ackID, let acknowledgement = session.takeAcknowledgement(id) {
                acknowledgement.succeed()
            }
        case .connectError, .binaryEvent, .binaryAck:
            self.protocolViolation(on: session, CodecError("clients may not send Socket.IO packet type \(packet.kind.rawValue)"))
        }
    }

    // MARK: CONNECT

    private func connect(_ packet: SocketIOPacket, on session: EngineSession) async {
        guard session.socket == nil else {
            self.logger.notice("Socket.IO CONNECT on an already connected session ignored", metadata: ["engineio.session": "\(session.logID)"])
            return
        }
        let service = self.chatService
        var token = session.bearerToken
        if case .object(let auth)? = packet.data, let value = auth["token"] {
            guard case .string(let string) = value else {
                self.refuseConnect(on: session, message: "unauthorized", failure: .malformedToken)
                return
            }
            token = string
        }
        let user: User
        switch await self.authenticator.authenticate(token) {
        case .failure(let failure):
            self.refuseConnect(on: session, message: "unauthorized", failure: failure)
            return
        case .success(let authenticated):
            user = authenticated
        }
        let socket = EngineSession.Socket(connection: ConnectionID(Self.randomID()), user: user)
        guard session.attach(socket) else { return }
        guard self.register(socket, session: session) else {
            _ = session.detach()
            self.logRefusal(
                "connections-per-user",
                "Socket.IO connection refused: too many connections for the user",
                metadata: ["chat.user.id": "\(LogSafe.value(user.id.rawValue))", "socketio.max_per_user": "\(self.configuration.maxConnectionsPerUser)"]
            )
            let detail = "you have \(self.configuration.maxConnectionsPerUser) connections open already; close one first"
            let data: JSONValue = .object(["code": .string("too_many_connections"), "message": .string(detail)])
            let packet = SocketIOPacket(.connectError, data: .object(["message": .string("too_many_connections"), "data": data]))
            try? session.enqueue(EngineIOPacket(.message, packet.encoded).encoded)
            return
        }
        // The CONNECT reply goes out once the engine has registered the connection, so a client that sees it is
        // reachable at once; events emitted to it meanwhile are held and follow the reply.
        await service.connect(socket.connection, user: user)
        let reply = SocketIOPacket(.connect, data: .object(["sid": .string(socket.connection.rawValue)]))
        guard session.markEngineKnows(socket.connection), session.announce(EngineIOPacket(.message, reply.encoded).encoded) else {
            // Closed while the engine was registering it: the close did not tell the engine, so tell it now.
            await service.disconnect(socket.connection)
            return
        }
        do {
            for chat in try await service.chats(of: user.id) {
                self.join(socket.connection, room: Self.room(of: chat.id))
            }
        } catch {
            self.logger.warning(
                "Could not join the user's chat rooms",
                metadata: ["chat.user.id": "\(user.id)", "error": "\(error)"]
            )
        }
    }

    private func refuseConnect(on session: EngineSession, message: String, failure: AuthenticationFailure) {
        self.refuseConnect(on: session, message: message, code: failure.rawValue, detail: failure.description)
    }

    private func refuseConnect(on session: EngineSession, message: String, code: String, detail: String) {
        self.logger.warning(
            "Socket.IO connection refused",
            metadata: ["engineio.session": "\(session.logID)", "socketio.refusal": "\(code)", "socketio.detail": "\(detail)"]
        )
        let data: JSONValue = .object(["code": .string(code), "message": .string(detail)])
        let packet = SocketIOPacket(.connectError, data: .object(["message": .string(message), "data": data]))
        try? session.enqueue(EngineIOPacket(.message, packet.encoded).encoded)
    }

    // MARK: EVENT

    private func receiveEvent(_ packet: SocketIOPacket, on session: EngineSession) async {
        guard let socket = session.socket else { return }
        let service = self.chatService
        guard let (name, arguments) = packet.eventNameAndArguments else { return }
        switch name {
        case "message:send":
            let request: SendMessageRequest
            switch Self.sendRequest(from: arguments) {
            case .success(let decoded):
                request = decoded
            case .failure(let error):
                self.answer(packet, on: session, socket: socket, with: error, chatID: Self.chatIDHint(arguments))
                return
            }
            await self.send(request, ackID: packet.ackID, socket: socket, session: session, service: service)
        case "user:reconnected":
            let connection = socket.connection
            let started = session.startReconnect {
                let delivered = await service.reconnected(connection)
                if let ackID = packet.ackID {
                    self.acknowledge(ackID, on: session, payload: ["delivered": delivered])
                }
            }
            if !started, let ackID = packet.ackID {
                self.acknowledge(ackID, on: session, payload: ["delivered": 0])
            }
        case "message:read":
            let chatID = Self.chatIDHint(arguments)
            switch Self.readRequest(from: arguments) {
            case .failure(let error):
                self.answer(packet, on: session, socket: socket, with: error, chatID: chatID)
            case .success(let (chat, messageID)):
                do {
                    let mark = try await service.markRead(chat, upTo: messageID, from: socket.connection)
                    if let ackID = packet.ackID { self.acknowledge(ackID, on: session, payload: ReadAcknowledgement(mark)) }
                } catch {
                    self.answer(packet, on: session, socket: socket, with: error, chatID: chat)
                }
            }
        case "typing:start", "typing:stop":
            switch Self.chatArgument(of: name, from: arguments) {
            case .failure(let error):
                self.answer(packet, on: session, socket: socket, with: error, chatID: Self.chatIDHint(arguments))
            case .success(let chat):
                if let error = await service.typing(chat, typing: name == "typing:start", from: socket.connection) {
                    self.answer(packet, on: session, socket: socket, with: error, chatID: chat)
                } else if let ackID = packet.ackID {
                    self.acknowledge(ackID, on: session, payload: ["chatId": chat.rawValue])
                }
            }
        default:
            let error = ChatError(
                .badRequest,
                "unknown event \(LogSafe.quoted(name, limit: 64)); this server accepts message:send, message:read, typing:start, typing:stop and user:reconnected"
            )
            self.answer(packet, on: session, socket: socket, with: error, chatID: nil)
        }
    }

    /// `message:read`'s argument `{chatId, messageId}`; the error names what is wrong.
    static func readRequest(from arguments: [JSONValue]) -> Result<(ChatID, MessageID), ChatError> {
        let chat: ChatID
        switch Self.chatArgument(of: "message:read", from: arguments, shape: "{chatId, messageId}") {
        case .failure(let error): return .failure(error)
        case .success(let value): chat = value
        }
        guard case .object(let object)? = arguments.first, let value = object["messageId"] else {
            return .failure(ChatError(.badRequest, "message:read needs 'messageId'"))
        }
        guard case .string(let string) = value else {
            return .failure(ChatError(.badRequest, "'messageId' must be a string, not \(value.kindName)"))
        }
        guard let id = MessageID(hex: string) else {
            return .failure(ChatError(.messageNotFound, "no message \(LogSafe.quoted(string, limit: 64)): a message id is 24 hexadecimal digits"))
        }
        return .success((chat, id))
    }

    /// The `chatId` of an event whose argument is an object naming a chat.
    static func chatArgument(of event: String, from arguments: [JSONValue], shape: String = "{chatId}") -> Result<ChatID, ChatError> {
        guard let first = arguments.first else {
            return .failure(ChatError(.badRequest, "\(event) needs an object \(shape)"))
        }
        guard case .object(let object) = first else {
            return .failure(ChatError(.badRequest, "\(event) takes an object \(shape), not \(first.kindName)"))
        }
        guard let value = object["chatId"] else {
            return .failure(ChatError(.badRequest, "\(event) needs 'chatId'"))
        }
        guard case .string(let chat) = value, !chat.isEmpty else {
            return .failure(ChatError(.badRequest, "'chatId' must be a non-empty string, not \(value.kindName)"))
        }
        return .success(ChatID(chat))
    }

    /// Starts a `message:send` and returns once its message has its place in the connection's order (or it
    /// failed before), so the session's next packet can be read while this one's store write is on its way; at
    /// most ``SocketIOConfiguration/maxSendsInFlight`` per session are.
    private func send(_ request: SendMessageRequest, ackID: UInt64?, socket: EngineSession.Socket, session: EngineSession, service: ChatService) async {
        guard self.configuration.maxSendsInFlight > 1 else {
            // One at a time: the send completes before the next packet is read (no task of its own).
            self.answer(await service.send(request, from: socket.connection), to: request, ackID: ackID, on: session)
            return
        }
        await session.sends.acquire()
        await withCheckedContinuation { (ordered: CheckedContinuation<Void, Never>) in
            Task {
                let result = await service.send(request, from: socket.connection, ordered: { ordered.resume() })
                session.sends.release()
                self.answer(result, to: request, ackID: ackID, on: session)
            }
        }
    }

    /// Answers a `message:send`'s acknowledgement, if it asked for one.
    private func answer(_ result: Result<MessageSent, ChatError>, to request: SendMessageRequest, ackID: UInt64?, on session: EngineSession) {
        guard let ackID else { return }
        switch result {
        case .success(let sent):
            try? session.enqueue(Self.ackPacket(ackID, json: WireEncoder.sent(sent)))
        case .failure(let error):
            self.acknowledge(ackID, on: session, payload: MessageErrorPayload(error, chatID: request.chatID, clientMessageID: request.clientMessageID))
        }
    }

    /// The acknowledgement id of a Socket.IO EVENT on the default namespace (`2<id>...`), read from the text alone
    /// so that a packet whose JSON is malformed still gets its error as the acknowledgement it asked for.
    static func leadingAckID(_ text: Substring) -> UInt64? {
        let utf8 = text.utf8
        guard utf8.first == UInt8(ascii: "2") else { return nil }
        let digits = utf8.dropFirst().prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        guard !digits.isEmpty, digits.count <= SocketIOPacket.maxAckIDDigits else { return nil }
        return UInt64(Substring(digits))
    }

    /// The id of the Socket.IO ACK `3<id>[...]` on the default namespace (`43<id>[...]` on the wire, inside an
    /// Engine.IO message); nil for anything else.
    static func fastAck(_ text: String) -> UInt64? {
        Self.fastAck(bytes: text.utf8)
    }

    /// ``fastAck(_:)`` over the packet's bytes (a WebSocket frame's, on the connection's event loop).
    static func fastAck(bytes: some Collection<UInt8>) -> UInt64? {
        guard bytes.count > 2, bytes.first == UInt8(ascii: "3") else { return nil }
        let digits = bytes.dropFirst(1).prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        guard !digits.isEmpty, digits.count <= SocketIOPacket.maxAckIDDigits, bytes[digits.endIndex...].first == UInt8(ascii: "[") else {
            return nil
        }
        // At most 15 digits: no overflow.
        return digits.reduce(0) { $0 * 10 + UInt64($1 - UInt8(ascii: "0")) }
    }

    /// The Socket.IO EVENT `2[<ackId>]["message:send",{...}]` on the default namespace (`42...` on the wire),
    /// decoded in one pass as the server decodes it; nil for anything else. Public for benchmarks.
    public static func fastSend(_ text: String) -> (ackID: UInt64?, request: SendMessageRequest)? {
        let utf8 = text.utf8
        guard utf8.count > 1, utf8.first == UInt8(ascii: "2") else { return nil }
        let afterType = utf8.index(after: utf8.startIndex)
        let digits = utf8[afterType...].prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        guard digits.count <= SocketIOPacket.maxAckIDDigits else { return nil }
        let json = utf8[digits.endIndex...]
        guard json.first == UInt8(ascii: "[") else { return nil }
        var ackID: UInt64?
        if !digits.isEmpty {
            guard let value = UInt64(Substring(digits)) else { return nil }
            ackID = value
        }
        // The common shape without Foundation; attachments, replyTo and the like through JSONDecoder.
        if let request = SendDecoder.decode(Substring(json).utf8) { return (ackID, request) }
        guard let envelope = try? JSONDecoder().decode(SendEnvelope.self, from: Data(json)), let request = envelope.request else {
            return nil
        }
        return (ackID, request)
    }

    /// Tells the client its event was refused: `message:error`, and the same payload as the ack when asked for.
    private func answer(_ packet: SocketIOPacket, on session: EngineSession, socket: EngineSession.Socket, with error: ChatError, chatID: ChatID?) {
        self.logger.info(
            "Client event refused",
            metadata: [
                "chat.connection.id": "\(socket.connection)", "error.code": "\(error.code)", "error": "\(LogSafe.value(error.message, limit: 256))",
            ]
        )
        let payload = MessageErrorPayload(error, chatID: chatID)
        try? self.emit(.messageError(payload), to: socket.connection, acknowledgement: nil)
        if let ackID = packet.ackID {
            self.acknowledge(ackID, on: session, payload: payload)
        }
    }

    private func acknowledge(_ ackID: UInt64, on session: EngineSession, payload: some Encodable) {
        guard let data = try? WireJSON.encode(payload) else { return }
        try? session.enqueue(Self.ackPacket(ackID, json: String(decoding: data, as: UTF8.self)))
    }

    /// The Engine.IO message carrying the Socket.IO ACK `ackID` with one argument, `json`.
    static func ackPacket(_ ackID: UInt64, json: String) -> String {
        "43\(ackID)[" + json + "]"
    }

    /// A packet that breaks the protocol (does not parse, or is not allowed where it came): the client is told
    /// why where it can still read it (`message:error`, or `CONNECT_ERROR` before connecting), then the session
    /// closes, as the reference server does.
    func protocolViolation(on session: EngineSession, _ error: CodecError, ackID: UInt64? = nil) {
        self.logger.notice(
            "Malformed packet; closing the session",
            metadata: ["engineio.session": "\(session.logID)", "error": "\(LogSafe.value(error.message, limit: 256))"]
        )
        let error = ChatError(.badRequest, "malformed packet: \(error.message); the connection is closed")
        var last: [String] = []
        if session.socket != nil {
            let payload = MessageErrorPayload(error)
            if let event = try? Self.encodeEvent(.messageError(payload)) { last.append("42" + event) }
            if let ackID, let data = try? WireJSON.encode(payload) {
                last.append(Self.ackPacket(ackID, json: String(decoding: data, as: UTF8.self)))
            }
        } else {
            last.append(EngineIOPacket(.message, Self.connectError(error).encoded).encoded)
        }
        if session.transport == .polling { last.append(EngineIOPacket(.close).encoded) }
        session.enqueueLast(last)
        self.closeSession(session, reason: "protocol violation: \(error.message)", notifyClient: false)
    }

    /// A `CONNECT_ERROR` packet carrying `error`'s code and message.
    static func connectError(_ error: ChatError) -> SocketIOPacket {
        let data: JSONValue = .object(["code": .string(error.code.rawValue), "message": .string(error.message)])
        return SocketIOPacket(.connectError, data: .object(["message": .string(error.code.rawValue), "data": data]))
    }

    /// A well-formed packet chatd does not take (binary data): the client is told and the connection stays up.
    func reject(on session: EngineSession, _ error: CodecError, ackID: UInt64? = nil) {
        self.logger.notice(
            "Unsupported packet refused",
            metadata: ["engineio.session": "\(session.logID)", "error": "\(LogSafe.value(error.message, limit: 256))"]
        )
        self.tell(session, ChatError(.badRequest, error.message), ackID: ackID)
    }

    /// Sends `error` to the client: `message:error` (and the acknowledgement it asked for) once connected,
    /// `CONNECT_ERROR` before.
    private func tell(_ session: EngineSession, _ error: ChatError, ackID: UInt64?) {
        if let socket = session.socket {
            let payload = MessageErrorPayload(error)
            try? self.emit(.messageError(payload), to: socket.connection, acknowledgement: nil)
            if let ackID { self.acknowledge(ackID, on: session, payload: payload) }
        } else {
            try? session.enqueue(EngineIOPacket(.message, Self.connectError(error).encoded).encoded)
        }
    }

    // MARK: Payload decoding

    /// Decodes `message:send`'s argument; the error names the field that is wrong.
    static func sendRequest(from arguments: [JSONValue]) -> Result<SendMessageRequest, ChatError> {
        guard let first = arguments.first else {
            return .failure(ChatError(.badRequest, "message:send needs an object {chatId, content, ...}"))
        }
        guard case .object = first else {
            return .failure(ChatError(.badRequest, "message:send takes an object {chatId, content, ...}, not \(first.kindName)"))
        }
        do {
            let data = try JSONEncoder().encode(first)
            return .success(try JSONDecoder().decode(SendMessageRequest.self, from: data))
        } catch let error as DecodingError {
            return .failure(ChatError(.badRequest, Self.describe(error)))
        } catch {
            return .failure(ChatError(.badRequest, "message:send's payload could not be read: \(error)"))
        }
    }

    private static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context, _ key: (any CodingKey)? = nil) -> String {
            let keys = context.codingPath + (key.map { [$0] } ?? [])
            return keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "message:send needs '\(path(context, key))'"
        case .typeMismatch(let type, let context):
            return "'\(path(context))' must be \(Self.describe(type))"
        case .valueNotFound(let type, let context):
            return "'\(path(context))' must be \(Self.describe(type)), not null"
        case .dataCorrupted(let context):
            return "'\(path(context))' is not valid: \(context.debugDescription)"
        @unknown default:
            return "message:send's payload is not valid"
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is [JSONValue].Type, is [Any].Type: "an array"
        default: "of another type (\(type))"
        }
    }

    private static func chatIDHint(_ arguments: [JSONValue]) -> ChatID? {
        if case .object(let object)? = arguments.first, case .string(let id)? = object["chatId"] { return ChatID(id) }
        return nil
    }
}

/// The acknowledgement of `message:read`: the reader's mark in force.
struct ReadAcknowledgement: Encodable {
    var chatId: ChatID
    var messageId: MessageID
    @WireTimestamp var readAt: Date

    init(_ mark: ReadMark) {
        self.chatId = mark.chatID
        self.messageId = mark.messageID
        self.readAt = mark.readAt
    }
}

/// `["message:send", {...}]` decoded directly; `request` is nil for any other event.
private struct SendEnvelope: Decodable {
    var request: SendMessageRequest?

    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        guard try container.decode(String.self) == "message:send", !container.isAtEnd else {
            self.request = nil
            return
        }
        self.request = try container.decode(SendMessageRequest.self)
    }
}

extension JSONValue {
    var kindName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}
