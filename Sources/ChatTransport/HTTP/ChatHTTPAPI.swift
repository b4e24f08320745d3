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
    let service: ChatService
    let authenticator: TokenAuthenticator
    let logger: Logger

    /// An API over `service`: every request goes through the engine (its checks, its store, its transport).
    public init(service: ChatService, authenticator: TokenAuthenticator, logger: Logger) {
        self.service = service
        self.authenticator = authenticator
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
        var encrypted: Bool?
    }

    private func createChat(_ request: Request) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let body: CreateChatBody = try await Self.decode(request)
        let chat = try await self.call { () async throws(ChatError) in
            try await self.service.createChat(by: caller, participants: body.participants, name: body.name, encrypted: body.encrypted ?? false)
        }
        return Self.json(.created, chat)
    }

    private func listChats(_ request: Request) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let chats = try await self.call { () async throws(ChatError) in try await self.service.chats(of: caller.id) }
        let states = try await self.call { () async throws(ChatError) in try await self.service.readState(of: chats.map(\.id), for: caller.id) }
        return Self.json(.ok, ["chats": chats.map { ChatListing(chat: $0, state: states[$0.id] ?? ChatReadState(unreadCount: 0, readUpTo: [:])) }])
    }

    /// A chat as `GET /api/chats` lists it: its fields, the caller's `unreadCount`, and each participant's read mark
    /// (`readUpTo: {userId: messageId}`).
    private struct ChatListing: Encodable {
        var chat: Chat
        var state: ChatReadState

        enum CodingKeys: String, CodingKey {
            case unreadCount, readUpTo
        }

        func encode(to encoder: any Encoder) throws {
            try self.chat.encode(to: encoder)
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(self.state.unreadCount, forKey: .unreadCount)
            let marks = Dictionary(uniqueKeysWithValues: self.state.readUpTo.map { ($0.key.rawValue, $0.value.hexString) })
            try container.encode(marks, forKey: .readUpTo)
        }
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
        let page = limit
        let messages = try await self.call { () async throws(ChatError) in
            try await self.service.history(of: ChatID(id), for: caller.id, before: before, limit: page)
        }
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
        let found = try await self.call { () async throws(ChatError) in try await self.service.receipts(of: messageID, for: caller.id) }
        return Self.json(.ok, ReceiptsBody(messageId: messageID, chatId: found.message.chatID, receipts: found.receipts))
    }

    /// The caller leaves the chat: they are no longer a participant, get none of its messages and share no
    /// presence through it. The chat goes on for the others.
    private func leave(_ request: Request, chat id: String) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let chat = try await self.call { () async throws(ChatError) in try await self.service.leave(ChatID(id), user: caller.id) }
        return Self.json(.ok, chat)
    }

    /// The caller accepts a chat they were invited to: from now on it delivers to them and shares their presence.
    private func accept(_ request: Request, chat id: String) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let chat = try await self.call { () async throws(ChatError) in try await self.service.accept(ChatID(id), user: caller.id) }
        return Self.json(.ok, chat)
    }

    private func listBlocks(_ request: Request) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let blocked = try await self.call { () async throws(ChatError) in try await self.service.blockedUsers(of: caller.id) }
        return Self.json(.ok, ["blocked": blocked.map(\.rawValue).sorted()])
    }

    /// Blocks or unblocks `other` for the caller.
    private func setBlocked(_ request: Request, other raw: String, blocked: Bool) async throws(APIError) -> Response {
        let caller = try await self.authenticate(request)
        let other = UserID(raw.removingPercentEncoding ?? raw)
        try await self.call { () async throws(ChatError) in try await self.service.setBlocked(other, by: caller.id, blocked: blocked) }
        return Response(status: .noContent)
    }

    // MARK: Helpers

    /// Runs an engine call; its `ChatError` becomes the matching HTTP status.
    private func call<T>(_ body: () async throws(ChatError) -> T) async throws(APIError) -> T {
        do {
            return try await body()
        } catch {
            let status: HTTPResponse.Status =
                switch error.code {
                case .badRequest: .badRequest
                case .chatNotFound, .messageNotFound: .notFound
                case .notAParticipant: .forbidden
                case .tooManyChats, .rateLimited: .tooManyRequests
                case .storeUnavailable, .unavailable: .serviceUnavailable
                case .unauthorized: .unauthorized
                default: .internalServerError
                }
            let message =
                switch error.code {
                case .storeUnavailable: "the message store could not be reached; retry later"
                case .internalError: "the message store refused the request; the server's log says why"
                default: error.message
                }
            throw APIError(status, error.code == .unavailable ? .storeUnavailable : error.code, message)
        }
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
