import ChatDomain
public import Hummingbird
public import HummingbirdCore
public import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import HTTPTypes

extension SocketIOServer {
    /// Mounts the Socket.IO endpoint (``SocketIOConfiguration/path``) on `router`: long-polling GET and POST,
    /// and the WebSocket upgrade. Serve the application with ``httpServer(router:)`` (or
    /// `.http1WebSocketUpgrade(webSocketRouter: router, configuration: ...)` with ``webSocketConfiguration``) so
    /// upgrades reach the router.
    public func addRoutes(to router: Router<ChatRequestContext>) {
        let path = RouterPath(self.configuration.path)
        router.get(path) { request, context in
            await self.handleGet(request, context: context)
        }
        router.post(path) { request, context in
            await self.handlePost(request, context: context)
        }
        // Engine.IO answers any other method with 400 and its "Bad handshake method" error, not 404.
        for method in [HTTPRequest.Method.put, .patch, .delete, .options] {
            router.on(path, method: method) { _, _ in
                self.errorResponse(.badHandshakeMethod)
            }
        }
    }

    /// The WebSocket settings the endpoint needs: frames up to ``SocketIOConfiguration/maxPayload``, no
    /// WebSocket-level pings (Engine.IO pings itself), and a closing handshake that may take
    /// ``SocketIOConfiguration/pingTimeout`` (a client that answers nothing in that time is gone, as for a ping).
    public var webSocketConfiguration: WebSocketServerConfiguration {
        // Text that is not UTF-8 fails the connection with 1007, as RFC 6455 §8.1 asks, rather than being read
        // with replacement characters.
        WebSocketServerConfiguration(
            maxFrameSize: self.configuration.maxPayload,
            autoPing: .disabled,
            closeTimeout: self.configuration.pingTimeout,
            validateUTF8: true
        )
    }

    /// An HTTP/1.1 server whose WebSocket upgrades go through `router` (the one ``addRoutes(to:)`` mounted on),
    /// with the server's connection limits: at most ``SocketIOConfiguration/maxHTTPConnections`` open, a first
    /// request head within ``SocketIOConfiguration/httpHeaderTimeout``, idle keep-alive connections closed after
    /// ``SocketIOConfiguration/httpIdleTimeout``.
    public func httpServer(router: Router<ChatRequestContext>) -> HTTPServerBuilder {
        let webSocketResponder = router.buildResponder()
        let http1 = HTTP1Channel.Configuration(idleTimeout: .nanoseconds(Int64(self.configuration.httpIdleTimeout.wholeMilliseconds) * 1_000_000))
        let configuration = HTTP1WebSocketUpgradeChannel.Configuration(http1: http1, ws: self.webSocketConfiguration)
        let connectionGuard = self.connectionGuard
        return HTTPServerBuilder { responder in
            GuardedChildChannel(
                base: HTTP1WebSocketUpgradeChannel(responder: responder, webSocketResponder: webSocketResponder, configuration: configuration),
                connectionGuard: connectionGuard
            )
        }
    }

    /// How many HTTP connections (polling and WebSocket) are open on servers built by ``httpServer(router:)``.
    public var httpConnectionCount: Int { self.connectionGuard.openConnections }

    // MARK: HTTP

    /// Engine.IO's HTTP error codes.
    private enum EngineError: Int {
        case unknownTransport = 0
        case unknownSession = 1
        case badHandshakeMethod = 2
        case badRequest = 3
        case forbidden = 4
        case unsupportedProtocolVersion = 5

        var message: String {
            switch self {
            case .unknownTransport: "Transport unknown"
            case .unknownSession: "Session ID unknown"
            case .badHandshakeMethod: "Bad handshake method"
            case .badRequest: "Bad request"
            case .forbidden: "Forbidden"
            case .unsupportedProtocolVersion: "Unsupported protocol version"
            }
        }
    }

    private func errorResponse(_ error: EngineError, status: HTTPResponse.Status = .badRequest, detail: String? = nil) -> Response {
        let body = "{\"code\":\(error.rawValue),\"message\":\"\(error.message)\""
            + (detail.map { ",\"detail\":\"\(Self.escape($0))\"" } ?? "") + "}"
        return Response(
            status: status,
            headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: body))
        )
    }

    private static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
    }

    private func textResponse(_ text: String, contentType: String = "text/plain; charset=UTF-8") -> Response {
        Response(
            status: .ok,
            headers: [.contentType: contentType, .cacheControl: "no-store"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: text))
        )
    }

    private func handleGet(_ request: Request, context: ChatRequestContext) async -> Response {
        let query = request.uri.queryParameters
        guard query["EIO"] == "4" else {
            return self.errorResponse(.unsupportedProtocolVersion, detail: "this server speaks Engine.IO 4 (Socket.IO v3 and later clients)")
        }
        let sid = query["sid"].map(String.init)
        switch query["transport"] {
        case "polling":
            guard let sid else { return await self.handshake(request, address: self.clientAddress(request, context: context)) }
            return await self.poll(sid)
        case "websocket":
            return await self.upgrade(request, context: context, sid: sid)
        default:
            return self.errorResponse(.unknownTransport)
        }
    }

    private func handshake(_ request: Request, address: String?) async -> Response {
        let session: EngineSession
        switch self.openSession(transport: .polling, bearerToken: Self.bearerToken(request), address: address) {
        case .success(let opened):
            session = opened
        case .failure(.serverFull):
            return self.errorResponse(.forbidden, status: .serviceUnavailable, detail: "the server holds its maximum number of sessions")
        case .failure(.tooManySessions):
            return self.errorResponse(.forbidden, status: .tooManyRequests, detail: "your address holds its maximum number of sessions; close some first")
        case .failure(.handshakeRate(let wait)):
            var response = self.errorResponse(.forbidden, status: .tooManyRequests, detail: "too many handshakes from your address; retry later")
            response.headers[.retryAfter] = String(max(1, Int(wait.rounded(.up))))
            return response
        }
        // The OPEN packet, queued when the session opened.
        let packets = await session.take(maxBytes: self.configuration.maxPayload) ?? []
        return self.textResponse(packets.joined(separator: String(EngineIOPacket.recordSeparator)))
    }

    private func poll(_ sid: String) async -> Response {
        guard let session = self.session(sid) else { return self.errorResponse(.unknownSession) }
        guard session.transport == .polling else {
            return self.errorResponse(.badRequest, detail: "this session has upgraded to WebSocket")
        }
        guard session.beginPoll() else {
            self.closeSession(session, reason: "protocol error: overlapping GET requests", notifyClient: false)
            return self.errorResponse(.badRequest, detail: "overlapping GET requests")
        }
        defer { session.endPoll() }
        guard let packets = await session.take(maxBytes: self.configuration.maxPayload) else {
            return self.textResponse(EngineIOPacket(.close).encoded)
        }
        if packets.isEmpty { return self.textResponse(EngineIOPacket(.noop).encoded) }
        return self.textResponse(packets.joined(separator: String(EngineIOPacket.recordSeparator)))
    }

    private func handlePost<Context: RequestContext>(_ request: Request, context: Context) async -> Response {
        let query = request.uri.queryParameters
        guard query["EIO"] == "4" else { return self.errorResponse(.unsupportedProtocolVersion) }
        guard query["transport"] == "polling" else { return self.errorResponse(.unknownTransport) }
        guard let sid = query["sid"].map(String.init) else { return self.errorResponse(.badHandshakeMethod) }
        guard let session = self.session(sid) else { return self.errorResponse(.unknownSession) }
        guard session.transport == .polling else {
            return self.errorResponse(.badRequest, detail: "this session has upgraded to WebSocket")
        }
        var request = request
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: self.configuration.maxPayload)
        } catch {
            self.logger.notice(
                "Engine.IO payload over maxPayload; closing the session",
                metadata: ["engineio.session": "\(session.logID)", "engineio.max_payload": "\(self.configuration.maxPayload)"]
            )
            self.closeSession(session, reason: "payload over maxPayload (\(self.configuration.maxPayload) bytes)", notifyClient: true)
            return self.errorResponse(.badRequest, status: .contentTooLarge, detail: "payload over \(self.configuration.maxPayload) bytes")
        }
        let packets: [EngineIOPacket]
        do {
            packets = try EngineIOPacket.decodePayload(String(buffer: body))
        } catch {
            self.logger.notice("Malformed Engine.IO payload; closing the session", metadata: ["engineio.session": "\(session.logID)", "error": "\(error)"])
            self.closeSession(session, reason: "parse error: \(error.message)", notifyClient: true)
            return self.errorResponse(.badRequest, detail: error.message)
        }
        for packet in packets {
            await self.receive(packet, on: session)
            // A packet that broke the protocol closed the session: the rest of the payload is not read.
            if session.isClosed { break }
        }
        return self.textResponse("ok", contentType: "text/html")
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest untrusted address in
    /// `X-Forwarded-For` (read from the right, since a client can write anything on the left). Nil when the
    /// request context does not know the peer (it does not conform to `RemoteAddressRequestContext`).
    func clientAddress<Context: RequestContext>(_ request: Request, context: Context) -> String? {
        guard let peer = (context as? any RemoteAddressRequestContext)?.remoteAddress?.ipAddress else { return nil }
        guard self.configuration.trustedProxies.contains(peer) else { return peer }
        let hops = request.headers[values: Self.forwardedFor].flatMap { $0.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return hops.reversed().first { !self.configuration.trustedProxies.contains($0) } ?? hops.first ?? peer
    }

    private static let forwardedFor = HTTPField.Name("X-Forwarded-For")!

    /// The token of an `Authorization: Bearer <token>` header.
    static func bearerToken(_ request: Request) -> String? {
        guard let header = request.headers[.authorization] else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return String(parts[1]).trimmingCharacters(in: .whitespaces)
    }

    // MARK: WebSocket

    private func upgrade(_ request: Request, context: ChatRequestContext, sid: String?) async -> Response {
        guard request.headers[.upgrade]?.lowercased() == "websocket" else {
            return self.errorResponse(.badRequest, detail: "transport=websocket needs a WebSocket upgrade request")
        }
        let session: EngineSession?
        var duplicate = false
        if let sid {
            guard let existing = self.session(sid) else { return self.errorResponse(.unknownSession) }
            if existing.transport == .websocket {
                // A second WebSocket for an upgraded session: accepted, then closed (as the reference server
                // does); the first one carries on.
                duplicate = true
                session = nil
            } else {
                guard existing.beginUpgrade() else {
                    return self.errorResponse(.badRequest, detail: "this session cannot upgrade now")
                }
                session = existing
            }
        } else {
            session = nil
        }
        let bearer = Self.bearerToken(request)
        let address = self.clientAddress(request, context: context)
        let isDuplicate = duplicate
        let channel = context.channel
        let middleware = WebSocketUpgradeMiddleware<ChatRequestContext> { _, _ in
            .upgrade([:])
        } onUpgrade: { inbound, outbound, _ in
            if isDuplicate {
                try? await outbound.close(.normalClosure, reason: "this session already has a WebSocket")
            } else if let session {
                try await self.runUpgrade(session, inbound: inbound, outbound: outbound, channel: channel)
            } else {
                try await self.runWebSocket(inbound: inbound, outbound: outbound, channel: channel, bearerToken: bearer, address: address)
            }
        }
        do {
            return try await middleware.handle(request, context: context) { _, _ in Response(status: .notFound) }
        } catch {
            session?.abandonUpgrade()
            return self.errorResponse(.badRequest, detail: "WebSocket upgrade failed")
        }
    }

    /// A session that starts on WebSocket: OPEN is its first message.
    private func runWebSocket(
        inbound: WebSocketInboundStream,
        outbound: WebSocketOutboundWriter,
        channel: any Channel,
        bearerToken: String?,
        address: String?
    ) async throws {
        let session: EngineSession
        switch self.openSession(transport: .websocket, bearerToken: bearerToken, address: address) {
        case .success(let opened):
            session = opened
        case .failure(let refusal):
            // 1013: try again later.
            try? await outbound.close(.unknown(1013), reason: Self.closeFrameReason(refusal.description))
            return
        }
        var messages = inbound.messages(maxSize: self.configuration.maxPayload).makeAsyncIterator()
        try await self.pump(session, messages: &messages, outbound: outbound, channel: channel)
    }

    /// The upgrade of a polling session: `2probe` → `3probe`, then `5` switches the session to this WebSocket.
    private func runUpgrade(
        _ session: EngineSession,
        inbound: WebSocketInboundStream,
        outbound: WebSocketOutboundWriter,
        channel: any Channel
    ) async throws {
        var messages = inbound.messages(maxSize: self.configuration.maxPayload).makeAsyncIterator()
        var upgraded = false
        do {
            probing: while let message = try await messages.next() {
                guard case .text(let text) = message, let packet = try? EngineIOPacket.decode(Substring(text)) else { break }
                switch packet.kind {
                case .ping where packet.text == "probe":
                    try await outbound.write(.text(EngineIOPacket(.pong, "probe").encoded))
                    // End the client's pending poll so it can pause polling and confirm the upgrade. Only a poll
                    // that is waiting gets it: buffered, it would go down the new WebSocket after the upgrade.
                    session.answerPendingPoll(with: EngineIOPacket(.noop).encoded)
                case .upgrade:
                    upgraded = true
                    break probing
                default:
                    break probing
                }
            }
        } catch {
            self.logger.debug("WebSocket upgrade abandoned", metadata: ["engineio.session": "\(session.logID)", "error": "\(error)"])
        }
        guard upgraded else {
            session.abandonUpgrade()
            return
        }
        session.completeUpgrade()
        self.logger.debug("Engine.IO session upgraded to WebSocket", metadata: ["engineio.session": "\(session.logID)"])
        try await self.pump(session, messages: &messages, outbound: outbound, channel: channel)
    }

    /// Moves packets both ways until either side closes: this task reads the client's messages; a
    /// ``WebSocketSessionHandler`` on the connection's event loop writes what is queued for the session when woken
    /// (an idle WebSocket holds no writer task) and takes the client's ACKs as they arrive.
    private func pump(
        _ session: EngineSession,
        messages: inout WebSocketInboundMessageStream.AsyncIterator,
        outbound: WebSocketOutboundWriter,
        channel: any Channel
    ) async throws {
        let closeWebSocket: @Sendable (String) -> Task<Void, Never> = { reason in
            Task {
                try? await outbound.close(.normalClosure, reason: Self.closeFrameReason(reason))
                session.writerFinished()
            }
        }
        let closeTimeout = TimeAmount(self.webSocketConfiguration.closeTimeout)
        let writer: NIOLoopBound<WebSocketSessionHandler>
        do {
            writer = try await channel.eventLoop.submit {
                let handler = WebSocketSessionHandler(session: session, closeTimeout: closeTimeout, closeWebSocket: closeWebSocket)
                let decoder = try channel.pipeline.syncOperations.handler(type: ByteToMessageHandler<WebSocketFrameDecoder>.self)
                try channel.pipeline.syncOperations.addHandler(handler, position: .after(decoder))
                return NIOLoopBound(handler, eventLoop: channel.eventLoop)
            }.get()
        } catch {
            // The connection went away before its handler was in place (its pipeline is gone).
            self.closeSession(session, reason: "WebSocket closed while being set up: \(error)", notifyClient: false)
            return
        }
        session.useWriter {
            writer.eventLoop.execute { writer.value.drain() }
        }
        do {
            while let message = try await messages.next() {
                switch message {
                case .text(let text):
                    switch Result(catching: { () throws(CodecError) in try EngineIOPacket.decode(Substring(text)) }) {
                    case .success(let packet): await self.receive(packet, on: session)
                    case .failure(let error): self.protocolViolation(on: session, error)
                    }
                case .binary:
                    self.reject(on: session, CodecError("binary messages are not supported; send JSON text"))
                }
                if session.isClosed { break }
            }
            self.closeSession(session, reason: "client closed", notifyClient: false)
        } catch {
            // Oversized messages (over maxPayload) and protocol violations end here; rethrowing lets the
            // WebSocket layer close with the matching code (1009 for a message too large).
            self.logger.notice(
                "WebSocket read failed (oversized or malformed message, or a broken connection); closing the session",
                metadata: ["engineio.session": "\(session.logID)", "engineio.max_payload": "\(self.configuration.maxPayload)", "error": "\(error)"]
            )
            // Errors found while collating a message (text that is not UTF-8, an oversized continuation)
            // reach us as WSCore's package-internal close error; closing with its code, before the writer
            // closes normally, is what RFC 6455 asks (1007, 1009), where rethrowing ends in a normal closure.
            let description = String(describing: error)
            let codes: [(name: String, code: UInt16)] = [("dataInconsistentWithMessage", 1007), ("messageTooLarge", 1009), ("protocolError", 1002)]
            let match = codes.first { description.contains($0.name) }
            if let match { try? await outbound.close(.unknown(match.code), reason: nil) }
            self.closeSession(session, reason: "WebSocket read failed: \(error)", notifyClient: false)
            // A close waiting for a client that stopped reading must not hold the connection open.
            session.cancelWriter()
            await session.waitUntilWriterFinished()
            if match != nil { return }
            throw error
        }
        // The handler's return closes the WebSocket: first let the writer send what is left, and the close.
        await session.waitUntilWriterFinished()
    }

    /// `reason` cut to what a close frame holds (RFC 6455: 123 bytes of UTF-8 after the code), at a character
    /// boundary; a longer reason makes the frame invalid and clients drop the connection without reading it.
    static func closeFrameReason(_ reason: String) -> String {
        guard reason.utf8.count > 123 else { return reason }
        var cut = ""
        for character in reason {
            guard cut.utf8.count + String(character).utf8.count <= 120 else { break }
            cut.append(character)
        }
        return cut + "..."
    }
}
