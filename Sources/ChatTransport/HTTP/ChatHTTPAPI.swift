public import ChatDomain
import Foundation
public import Hummingbird
public import Logging
import NIOCore

/// The HTTP API next to the Socket.IO endpoint: chats, history, delivery receipts, and the health endpoints.
///
/// Every `/api` route needs `Authorization: Bearer <jwt>` (the same tokens as Socket.IO) and answers errors as
/// `{"error": {"code", "message"}}`. Mount it with ``addRoutes(to:)``.
public struct ChatHTTPAPI: Sendable {
    /// The most messages one history page returns; larger `limit`s are capped to it.
    public static let maxPageSize = 200
    /// The page size when `limit` is absent.
    public static let defaultPageSize = 50
    /// What one user may create.
    public struct Limits: Sendable {
        /// The most participants a chat may have, its creator included. Default 1,000.
        public var maxParticipants = 1000
        /// The most chats a user may be in and still create another. Default 1,000.
        public var maxChatsPerUser = 1000
        /// Whether the people a chat names must accept it (`POST /api/chats/{id}/accept`) before it delivers to
        /// them and shares their presence. Default false: a chat is live for everyone it names.
        public var requireAcceptance = false

        /// The defaults.
        public init() {}
    }

    let service: ChatService
    let store: any MessageStore
    let authenticator: TokenAuthenticator
    let socketIO: SocketIOServer?
    let limits: Limits
    let logger: Logger

    /// An API over `service` and its `store`; with `socketIO`, connected users join the rooms of chats created here.
    public init(
        service: ChatService,
        store: any MessageStore,
        authenticator: TokenAuthenticator,
        socketIO: SocketIOServer?,
        limits: Limits = Limits(),
        logger: Logger
    ) {
        self.service = service
        self.store = store
        self.authenticator = authenticator
        self.socketIO = socketIO
        self.limits = limits
        self.logger = logger
    }

    /// Adds `POST /api/chats`, `GET /api/chats`, `GET /api/chats/{id}/messages`, `GET /api/messages/{id}/receipts`,
    /// `GET /healthz` and `GET /readyz` to `router`.
    public func addRoutes<Context: RequestContext>(to router: Router<Context>) {
        router.post("/api/chats") { request, _ in await self.respond { () async throws(APIError) -> Response in try await self.createChat(request) } }
        router.get("/api/chats") { request, _ in await self.respond { () async throws(APIError) -> Response in try await self.listChats(request) } }
        router.get("/api/chats/:id/messages") { request, context in
            await self.respond { () async throws(APIError) -> Response in try await self.history(request, chat: context.parameters.get("id") ?? "") }
        }
        router.get("/api/messages/:id/receipts") { request, context in
            await self.respond { () async throws(APIError) -> Response in try await self.receipts(request, message: context.parameters.get("id") ?? "") }
        }
        router.post("/api/chats/:id/leave") { request, context in
            await self.respond { () async throws(APIError) -> Response in try await self.leave(request, chat: context.parameters.get("id") ?? "") }
        }
        router.post("/api/chats/:id/accept") { request, context in
            await self.respond { () async throws(APIError) -> Response in try await self.accept(request, chat: context.parameters.get("id") ?? "") }
        }
        router.get("/api/users/me/blocks") { request, _ in
            await self.respond { () async throws(APIError) -> Response in try await self.listBlocks(request) }
        }
        router.post("/api/users/me/blocks/:userId") { request, context in
            await self.respond { () async throws(APIError) -> Response in
                try await self.setBlocked(request, other: context.parameters.get("userId") ?? "", blocked: true)
            }
        }
        router.delete("/api/users/me/blocks/:userId") { request, context in
            await self.respond { () async throws(APIError) -> Response in
                try await self.setBlocked(request, other: context.parameters.get("userId") ?? "", blocked: false)
            }
        }
        router.get("/healthz") { _, _ in
            Self.json(.ok, ["status": "ok"])
        }
        router.get("/readyz") { _, _ in
            let health = await self.service.probe()
            let body = ReadinessBody(
                status: health.store == .down ? "down" : (health.queue == .ok && health.presence == .ok ? "ok" : "degraded"),
                components: ["store": health.store.rawValue, "queue": health.queue.rawValue, "presence": health.presence.rawValue]
            )
            return Self.json(health.store == .down ? .serviceUnavailable : .ok, body)
        }
    }

    // MARK: Handlers

    private struct CreateChatBody: Decodable {
        var participants: [String]
        var name: String?
    }

    private func createChat(_ request: Request) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let body: CreateChatBody = try await Self.decode(request)
        var participants: [UserID] = [caller.id]
        for raw in body.participants {
            let id = raw.trimmingCharacters(in: .whitespaces)
            guard !id.isEmpty, id.utf8.count <= 256, !id.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw APIError(.badRequest, .badRequest, "each participant must be a user id of 1 to 256 characters, without control characters")
            }
            if !participants.contains(UserID(id)) { participants.append(UserID(id)) }
        }
        guard participants.count >= 2 else {
            throw APIError(.badRequest, .badRequest, "a chat needs at least one participant besides you")
        }
        guard participants.count <= self.limits.maxParticipants else {
            throw APIError(.badRequest, .badRequest, "a chat has at most \(self.limits.maxParticipants) participants")
        }
        if let name = body.name, name.utf8.count > 256 {
            throw APIError(.badRequest, .badRequest, "name must be at most 256 characters")
        }
        let existing = try await self.storeCall { try await self.store.chats(of: caller.id) }
        guard existing.count < self.limits.maxChatsPerUser else {
            throw APIError(
                .tooManyRequests,
                ChatError.Code(rawValue: "too_many_chats"),
                "you are in \(existing.count) chats, the most this server allows; leave one first"
            )
        }
        let chat = Chat(
            id: ChatID(MessageIDGenerator().next().hexString),
            participants: participants,
            name: body.name,
            invited: self.limits.requireAcceptance ? participants.filter { $0 != caller.id } : []
        )
        try await self.storeCall {
            // A user exists from the first time an id is used.
            let known = try await self.store.users(participants)
            for id in participants where known[id] == nil {
                try await self.store.saveUser(id == caller.id ? caller : User(id: id, username: id.rawValue))
            }
            try await self.store.saveChat(chat)
        }
        for participant in participants {
            self.socketIO?.join(user: participant, room: SocketIOServer.room(of: chat.id))
        }
        self.logger.info(
            "Chat created",
            metadata: ["chat.id": "\(chat.id)", "chat.user.id": "\(caller.id)", "chat.participants": "\(participants.count)"]
        )
        return Self.json(.created, chat)
    }

    private func listChats(_ request: Request) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let chats = try await self.storeCall { try await self.store.chats(of: caller.id) }
        return Self.json(.ok, ["chats": chats])
    }

    private struct HistoryPage: Encodable {
        var messages: [Message]
        /// Pass as `before` to get the next (older) page; null on the last page.
        var nextBefore: MessageID?
    }

    private func history(_ request: Request, chat id: String) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let query = request.uri.queryParameters
        var before: MessageID?
        if let raw = query["before"], !raw.isEmpty {
            guard let parsed = MessageID(hex: String(raw)) else {
                throw APIError(.badRequest, .badRequest, "before must be a message id (24 hexadecimal digits)")
            }
            before = parsed
        }
        var limit = Self.defaultPageSize
        if let raw = query["limit"] {
            guard let parsed = Int(raw), parsed >= 1 else {
                throw APIError(.badRequest, .badRequest, "limit must be a whole number of at least 1 (at most \(Self.maxPageSize) are returned)")
            }
            limit = min(parsed, Self.maxPageSize)
        }
        let chat = try await self.participantChat(ChatID(id), caller: caller)
        let messages = try await self.storeCall { try await self.store.history(of: chat.id, before: before, limit: limit) }
        return Self.json(.ok, HistoryPage(messages: messages, nextBefore: messages.count == limit ? messages.last?.id : nil))
    }

    private struct ReceiptsBody: Encodable {
        var messageId: MessageID
        var chatId: ChatID
        var receipts: [DeliveryReceipt]
    }

    private func receipts(_ request: Request, message id: String) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        guard let messageID = MessageID(hex: id) else {
            throw APIError(.badRequest, .badRequest, "a message id is 24 hexadecimal digits")
        }
        guard let message = try await self.storeCall({ try await self.store.message(messageID) }) else {
            throw APIError(.notFound, ChatError.Code(rawValue: "message_not_found"), "no message \(LogSafe.quoted(id))")
        }
        _ = try await self.participantChat(message.chatID, caller: caller)
        let receipts = try await self.storeCall { try await self.store.receipts(for: messageID) }
        return Self.json(.ok, ReceiptsBody(messageId: messageID, chatId: message.chatID, receipts: receipts))
    }

    /// The caller leaves the chat: they are no longer a participant, get none of its messages and share no
    /// presence through it. The chat goes on for the others.
    private func leave(_ request: Request, chat id: String) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        var chat = try await self.participantChat(ChatID(id), caller: caller)
        chat.participants.removeAll { $0 == caller.id }
        chat.invited.removeAll { $0 == caller.id }
        let updated = chat
        try await self.storeCall { try await self.store.saveChat(updated) }
        self.socketIO?.leave(user: caller.id, room: SocketIOServer.room(of: chat.id))
        self.logger.info("Chat left", metadata: ["chat.id": "\(chat.id)", "chat.user.id": "\(LogSafe.value(caller.id.rawValue))"])
        return Self.json(.ok, updated)
    }

    /// The caller accepts a chat they were invited to: from now on it delivers to them and shares their presence.
    private func accept(_ request: Request, chat id: String) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        var chat = try await self.participantChat(ChatID(id), caller: caller)
        chat.invited.removeAll { $0 == caller.id }
        let updated = chat
        try await self.storeCall { try await self.store.saveChat(updated) }
        return Self.json(.ok, updated)
    }

    private func listBlocks(_ request: Request) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let blocked = try await self.storeCall { try await self.store.blockedUsers(of: caller.id) }
        return Self.json(.ok, ["blocked": blocked.map(\.rawValue).sorted()])
    }

    /// Blocks or unblocks `other` for the caller: a blocked user's messages to the caller are refused (`blocked`)
    /// or, in a group, not delivered to the caller, and the blocked user no longer sees the caller's presence.
    private func setBlocked(_ request: Request, other raw: String, blocked: Bool) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let other = raw.removingPercentEncoding ?? raw
        guard !other.isEmpty, other.utf8.count <= 256, other != caller.id.rawValue else {
            throw APIError(.badRequest, .badRequest, "name another user's id (1 to 256 characters)")
        }
        try await self.storeCall { try await self.store.setBlocked(UserID(other), by: caller.id, blocked: blocked) }
        self.logger.info(
            blocked ? "User blocked" : "User unblocked",
            metadata: ["chat.user.id": "\(LogSafe.value(caller.id.rawValue))", "chat.blocked_user.id": "\(LogSafe.value(other))"]
        )
        return Response(status: .noContent)
    }

    // MARK: Helpers

    private func participantChat(_ id: ChatID, caller: User) async throws(APIError) -> Chat {
        guard let chat = try await self.storeCall({ try await self.store.chat(id) }) else {
            throw APIError(.notFound, .chatNotFound, "no chat \(LogSafe.quoted(id.rawValue))")
        }
        guard chat.hasParticipant(caller.id) else {
            throw APIError(.forbidden, .notAParticipant, "you are not a participant of chat \(LogSafe.quoted(id.rawValue))")
        }
        return chat
    }

    private func authenticate(_ request: Request) async throws(APIError) -> User {
        guard let token = SocketIOServer.bearerToken(request) else {
            throw APIError(.unauthorized, .unauthorized, "send Authorization: Bearer <token>")
        }
        switch await self.authenticator.authenticate(token) {
        case .success(let user): return user
        case .failure(let failure): throw APIError(.unauthorized, .unauthorized, failure.description)
        }
    }

    private func storeCall<T>(_ body: () async throws -> T) async throws(APIError) -> T {
        do {
            return try await body()
        } catch let error as ChatError where error.code == .internalError {
            self.logger.error("HTTP API store call failed", metadata: ["error": "\(LogSafe.value(String(describing: error), limit: 1024))"])
            throw APIError(.internalServerError, .internalError, "the message store refused the request; the server's log says why")
        } catch {
            self.logger.warning("HTTP API store call failed", metadata: ["error": "\(error)"])
            throw APIError(.serviceUnavailable, .storeUnavailable, "the message store could not be reached; retry later")
        }
    }

    private static func decode<T: Decodable>(_ request: Request) async throws(APIError) -> T {
        var request = request
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: 64 * 1024)
        } catch {
            throw APIError(.contentTooLarge, .badRequest, "the body is over 64 KiB")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer: body))
        } catch let error as DecodingError {
            throw APIError(.badRequest, .badRequest, Self.describe(error))
        } catch {
            throw APIError(.badRequest, .badRequest, "the body is not JSON")
        }
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, _): "the body needs '\(key.stringValue)'"
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            "'\(context.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type"
        case .dataCorrupted: "the body is not valid JSON"
        @unknown default: "the body is not valid"
        }
    }

    private func respond(_ handler: () async throws(APIError) -> Response) async -> Response {
        do {
            return try await handler()
        } catch {
            if error.status != .unauthorized, error.status != .forbidden, error.status != .notFound {
                self.logger.info(
                    "HTTP API request refused",
                    metadata: ["error.code": "\(error.code)", "error": "\(LogSafe.value(error.message, limit: 256))"]
                )
            }
            return Self.json(error.status, ["error": ["code": error.code.rawValue, "message": error.message]])
        }
    }

    static func json(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
        let data = (try? WireJSON.encode(value)) ?? Data("{}".utf8)
        return Response(
            status: status,
            headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data))
        )
    }
}

private struct ReadinessBody: Encodable {
    var status: String
    var components: [String: String]
}

/// An HTTP API error: the status, and the `{"error": {"code", "message"}}` body.
struct APIError: Error {
    var status: HTTPResponse.Status
    var code: ChatError.Code
    var message: String

    init(_ status: HTTPResponse.Status, _ code: ChatError.Code, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }
}
