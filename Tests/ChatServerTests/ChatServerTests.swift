import ChatBrokerAMQP
import ChatDomain
import ChatPresenceRedis
@testable import ChatServer
import ChatStoreSQLite
import ChatTransport
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Testing

/// chatd's whole application built in-process (no child process, no port scraped from a log line): the HTTP API,
/// health, readiness and metrics through the application's router (``RouterClient``).
@Suite("chatd application, in-process")
struct ChatServerTests {
    static let secret = "in-process-secret-0123456789-abcdefghij"

    /// Builds chatd from `environment` (over the test secret, limits off), runs its services, and hands the
    /// application's router client to `body`.
    func withServer(
        _ environment: [String: String] = [:],
        _ body: @Sendable (ChatServer, RouterClient) async throws -> Void
    ) async throws {
        // Each server keeps its embedded file in a directory of its own (the default mode, SQLite).
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("chatd-server-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        var base = ["JWT_SECRET": Self.secret, "PORT": "0", "SEND_RATE_PER_USER": "0", "FANOUT_RATE_PER_USER": "0", "DATA_DIR": dataDirectory.path]
        base.merge(environment) { $1 }
        let settings = try ChatServerSettings.resolve(environment: base)
        var logger = Logger(label: "chatd.test")
        logger.logLevel = .warning
        let server = try await ChatServer.build(settings: settings, logger: logger)
        let group = ServiceGroup(configuration: .init(services: server.backgroundServices.map { .init(service: $0) }, logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do {
                try await body(server, RouterClient(server.application))
            } catch {
                await group.triggerGracefulShutdown()
                throw error
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    static func token(_ user: String) async throws -> String {
        let authenticator = try await TokenAuthenticator(secret: Self.secret)
        return try await authenticator.token(for: User(id: UserID(user), username: user), lifetime: .seconds(600))
    }

    static func headers(_ token: String?) -> HTTPFields {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let token { headers[.authorization] = "Bearer \(token)" }
        return headers
    }

    static func json(_ response: RouterClient.Response) -> JSONValue? {
        try? JSONDecoder().decode(JSONValue.self, from: Data(String(buffer: response.body).utf8))
    }

    @Test("/healthz and /readyz answer ok with every component up; /metrics is Prometheus text")
    func health() async throws {
        try await self.withServer { _, client in
            let health = try await client.execute(uri: "/healthz", method: .get)
            #expect(health.status == .ok)
            let ready = try await client.execute(uri: "/readyz", method: .get)
            #expect(ready.status == .ok)
            #expect(Self.json(ready)?["components"] == .object(["store": "ok", "queue": "ok", "presence": "ok"]))
            let metrics = try await client.execute(uri: "/metrics", method: .get)
            #expect(metrics.status == .ok)
            #expect(metrics.headers[.contentType]?.hasPrefix("text/plain") == true)
        }
    }

    @Test("The HTTP API: 401, 400, 201, the list of a participant's chats, 403, 404, pages without gaps, receipts")
    func httpAPI() async throws {
        try await self.withServer { server, client in
            let alice = try await Self.token("alice")
            let carol = try await Self.token("carol")
            #expect(try await client.execute(uri: "/api/chats", method: .get).status == .unauthorized)
            let badType = try await client.execute(
                uri: "/api/chats", method: .post, headers: Self.headers(alice), body: ByteBuffer(string: #"{"participants":"bob"}"#)
            )
            #expect(badType.status == .badRequest)
            #expect(Self.json(badType)?["error"]?["message"] == "'participants' has the wrong type")
            let created = try await client.execute(
                uri: "/api/chats", method: .post, headers: Self.headers(alice), body: ByteBuffer(string: #"{"participants":["bob"]}"#)
            )
            #expect(created.status == .created)
            guard case .string(let chat)? = Self.json(created)?["_id"] else {
                Issue.record("no chat id: \(String(buffer: created.body))")
                return
            }
            let listed = try await client.execute(uri: "/api/chats", method: .get, headers: Self.headers(try await Self.token("bob")))
            #expect(Self.json(listed)?["chats"]?.arrayValue?.count == 1)
            #expect(Self.json(try await client.execute(uri: "/api/chats", method: .get, headers: Self.headers(carol)))?["chats"] == .array([]))
            #expect(try await client.execute(uri: "/api/chats/\(chat)/messages", method: .get, headers: Self.headers(carol)).status == .forbidden)
            #expect(try await client.execute(uri: "/api/chats/nope/messages", method: .get, headers: Self.headers(alice)).status == .notFound)
            #expect(try await client.execute(uri: "/api/chats/\(chat)/messages?limit=ten", method: .get, headers: Self.headers(alice)).status == .badRequest)

            // Messages through the engine, as a connected client would send them.
            let connection = ConnectionID("in-process-alice")
            await server.engine.connect(connection, user: User(id: UserID("alice"), username: "alice"))
            var ids: [String] = []
            for index in 0..<25 {
                let sent = await server.engine.send(SendMessageRequest(chatID: ChatID(chat), content: "m\(index)"), from: connection)
                ids.append(try sent.get().messageID.hexString)
            }
            var seen: [String] = []
            var before: String?
            for expected in [10, 10, 5] {
                let query = "?limit=10" + (before.map { "&before=\($0)" } ?? "")
                let page = Self.json(try await client.execute(uri: "/api/chats/\(chat)/messages\(query)", method: .get, headers: Self.headers(alice)))
                let messages = page?["messages"]?.arrayValue ?? []
                #expect(messages.count == expected)
                seen += messages.compactMap { $0["_id"]?.stringValue }
                before = page?["nextBefore"]?.stringValue
            }
            #expect(seen == Array(ids.reversed()))
            #expect(before == nil)
            // bob never connected: the last message is sent (queued) to him, and only participants may see it.
            let receipts = try await client.execute(uri: "/api/messages/\(ids.last!)/receipts", method: .get, headers: Self.headers(alice))
            #expect(receipts.status == .ok)
            #expect(Self.json(receipts)?["receipts"]?.arrayValue?.contains { $0["userId"] == "bob" } == true, "\(String(buffer: receipts.body))")
            #expect(try await client.execute(uri: "/api/messages/\(ids.last!)/receipts", method: .get, headers: Self.headers(carol)).status == .forbidden)
        }
    }

    @Test("/readyz is 503 with the store down while the configured MongoDB cannot be reached")
    func readinessWithStoreDown() async throws {
        try await self.withServer(["MONGODB_URI": "mongodb://127.0.0.1:9/chatd?serverSelectionTimeoutMS=200"]) { _, client in
            let ready = try await client.execute(uri: "/readyz", method: .get)
            #expect(ready.status == .serviceUnavailable)
            #expect(Self.json(ready)?["components"]?["store"] == "down")
            #expect(try await client.execute(uri: "/healthz", method: .get).status == .ok)
        }
    }

    @Test("/readyz is 200 and degraded while the configured RabbitMQ and Redis cannot be reached; sends still succeed")
    func readinessDegraded() async throws {
        let unreachable = ["RABBITMQ_HOST": "127.0.0.1", "RABBITMQ_PORT": "9", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "9"]
        try await self.withServer(unreachable) { server, client in
            let ready = try await client.execute(uri: "/readyz", method: .get)
            #expect(ready.status == .ok)
            #expect(Self.json(ready)?["status"] == "degraded")
            #expect(Self.json(ready)?["components"] == .object(["store": "ok", "queue": "degraded", "presence": "degraded"]))
            // Degraded is not down: a message is stored and confirmed.
            let alice = User(id: UserID("alice"), username: "alice")
            let chat = try await server.engine.createChat(by: alice, participants: ["bob"], name: nil)
            await server.engine.connect(ConnectionID("c1"), user: alice)
            let sent = await server.engine.send(SendMessageRequest(chatID: chat.id, content: "stored anyway"), from: ConnectionID("c1"))
            #expect((try? sent.get()) != nil, "\(sent)")
        }
    }

    @Test("Settings: a bad value names its variable; a service without JWT_SECRET is refused; the adapters follow the settings")
    func settings() async throws {
        #expect(throws: ChatServerSettings.Invalid.self) { try ChatServerSettings.resolve(environment: ["PORT": "eighty"]) }
        do {
            _ = try ChatServerSettings.resolve(environment: ["REDIS_HOST": "127.0.0.1"])
            Issue.record("a configured service without JWT_SECRET must be refused")
        } catch {
            #expect(error.description.contains("JWT_SECRET"))
        }
        // Nothing configured: the embedded SQLite file in DATA_DIR holds the store and the queue; IN_MEMORY keeps
        // them in memory; a second chatd on the same directory is refused.
        let dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("chatd-settings-\(UUID().uuidString)/nested")
        defer { try? FileManager.default.removeItem(at: dataDirectory.deletingLastPathComponent()) }
        let embedded = try Adapters(settings: ChatServerSettings.resolve(environment: ["DATA_DIR": dataDirectory.path]))
        #expect(embedded.services.count == 1 && embedded.store is SQLiteChatStore && embedded.queue is SQLiteChatStore)
        #expect(FileManager.default.fileExists(atPath: dataDirectory.appendingPathComponent("chatd.sqlite").path), "DATA_DIR created")
        do {
            _ = try Adapters(settings: ChatServerSettings.resolve(environment: ["DATA_DIR": dataDirectory.path]))
            Issue.record("a second chatd on the same DATA_DIR must be refused")
        } catch {
            #expect("\(error)".contains("another chatd process uses this database"))
        }
        await (embedded.store as? SQLiteChatStore)?.close()
        let inMemory = try Adapters(settings: ChatServerSettings.resolve(environment: ["IN_MEMORY": "true"]))
        #expect(inMemory.services.isEmpty && inMemory.store is InMemoryMessageStore && inMemory.queue is InMemoryMessageQueue)
        #expect(throws: ChatServerSettings.Invalid.self) { try ChatServerSettings.resolve(environment: ["IN_MEMORY": "maybe"]) }
        let redis = try Adapters(settings: ChatServerSettings.resolve(environment: ["REDIS_HOST": "127.0.0.1", "JWT_SECRET": Self.secret, "IN_MEMORY": "true"]))
        #expect(redis.services.count == 1 && redis.store is InMemoryMessageStore && !(redis.presence is InMemoryPresenceStore))
        #expect(redis.relay == nil, "no relay without RabbitMQ")
        await (redis.presence as? RedisPresenceStore)?.close()

        // Several nodes: the presence TTL sets Redis' TTL and the heartbeat (every third of it); RabbitMQ and Redis
        // together give the engine a relay.
        let services = ["REDIS_HOST": "127.0.0.1", "RABBITMQ_HOST": "127.0.0.1", "JWT_SECRET": Self.secret, "IN_MEMORY": "true"]
        let nodes = try ChatServerSettings.resolve(environment: services.merging(["PRESENCE_TTL_MS": "6000"]) { $1 })
        #expect(nodes.redis?.presenceTTL == .seconds(6) && nodes.chatService.presenceHeartbeatInterval == .seconds(2))
        #expect(nodes.chatService.janitorInterval == .seconds(2) && nodes.chatService.janitorLease == .seconds(24), "a janitor round every third of the TTL")
        #expect(nodes.rabbitMQ?.queueType == .classic)
        #expect(try ChatServerSettings.resolve(environment: services.merging(["RABBITMQ_QUEUE_TYPE": "quorum"]) { $1 }).rabbitMQ?.queueType == .quorum)
        do {
            _ = try ChatServerSettings.resolve(environment: services.merging(["RABBITMQ_QUEUE_TYPE": "mirrored"]) { $1 })
            Issue.record("an unknown queue type must be refused")
        } catch {
            #expect(error.description.contains("RABBITMQ_QUEUE_TYPE") && error.description.contains("classic or quorum"))
        }
        #expect(try ChatServerSettings.resolve(environment: services).redis?.presenceTTL == .seconds(15), "15 s by default")
        do {
            _ = try ChatServerSettings.resolve(environment: services.merging(["PRESENCE_TTL_MS": "100"]) { $1 })
            Issue.record("a presence TTL under 3 s must be refused")
        } catch {
            #expect(error.description.contains("PRESENCE_TTL_MS"))
        }
        let cluster = try Adapters(settings: nodes)
        #expect(cluster.relay is RabbitMQMessageQueue)
        await (cluster.presence as? RedisPresenceStore)?.close()
        await (cluster.queue as? RabbitMQMessageQueue)?.close()
    }
}

extension JSONValue {
    subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }
}

extension JSONValue: ExpressibleByStringLiteral {
    init(stringLiteral value: String) { self = .string(value) }
}
