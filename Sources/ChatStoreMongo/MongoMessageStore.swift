import ChatAdapterSupport
public import ChatDomain
public import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// A ``ChatDomain/MessageStore`` on MongoDB, through libmongoc.
///
/// Collections `users`, `chats` and `messages` use the product's field names; message ids are ObjectIds and dates
/// BSON dates. Each message also carries `pendingFor` (the recipients it still has to reach) and `outcomes`
/// (expiries and failures). Indexes are created on first use, idempotently.
///
/// libmongoc blocks, so every call runs on threads of this store's own (never on Swift's cooperative pool), each
/// with a client from one `mongoc_client_pool_t`. While the server is unreachable a call fails after the server
/// selection timeout with ``ChatDomain/ChatError`` code `unavailable`; when it is back, calls succeed again.
///
/// Run it as a `Service` (or call ``close()``) so its threads stop.
public final class MongoMessageStore: MessageStore, Service {
    private let pool: MongoClientPool
    private let threads: BlockingThreads
    private let logger: Logger
    private let maxPageSize: Int
    /// The receipts webhook outbox's bound.
    public let capacity: Int
    private let indexesReady = Mutex(false)
    /// Calls that concurrent sends make, each kind taken in batches by a store thread (see ``BatchRequest``).
    private let inserts = PumpQueue<InsertRequest>()
    private let chatLookups = PumpQueue<ChatLookup>()
    private let blockerLookups = PumpQueue<BlockerLookup>()
    /// The newest message this store set as each chat's `lastMessage` (see ``results(of:)``).
    private let newestWritten = Mutex<[ChatID: MessageID]>([:])
    /// Serialises this store's readBy writes. On MongoDB each update is atomic anyway; on a server that applies an
    /// update as an unisolated read-modify-write (nx-27017 on SQLite may), concurrent marks from one process could
    /// otherwise add a user twice.
    private let readByWrites = Mutex(())

    /// Creates the store; it connects on first use.
    /// - Throws: ``ChatDomain/ChatError`` `badRequest` when the URI is not a valid connection string.
    public init(configuration: MongoStoreConfiguration, logger: Logger) throws {
        do {
            self.pool = try MongoClientPool.make(configuration: configuration, logger: logger)
        } catch {
            throw ChatError(.badRequest, error.message, underlying: error)
        }
        self.logger = logger
        self.maxPageSize = configuration.maxPageSize
        self.capacity = max(1, configuration.receiptOutboxCapacity)
        self.threads = BlockingThreads(count: configuration.threads, role: "message store")
    }

    /// Creates the indexes the store's queries need (also done on first use).
    public func prepare() async throws {
        _ = try await self.run { pool in try Self.createIndexes(pool) }
        self.indexesReady.withLock { $0 = true }
    }

    /// Asks the server to answer (`ping`); throws `unavailable` after the server selection timeout when it cannot.
    public func ping() async throws {
        _ = try await self.run { pool in try pool.command(["ping": .int(1)]) }
    }

    /// Waits for graceful shutdown (or cancellation), then stops the store's threads.
    public func run() async throws {
        try? await gracefulShutdown()
        await self.close()
    }

    /// Stops the store's threads; later calls fail with `unavailable`.
    public func close() async {
        await self.threads.shutDown()
    }

    // MARK: MessageStore

    /// Inserts `message` and sets it as its chat's `lastMessage`. Concurrent inserts share one visit to a store
    /// thread: one `insert` command for all their documents and one `update` for the newest message of each of
    /// their chats (see ``BatchRequest``); the call returns once both were answered.
    public func insert(_ message: Message, pendingFor recipients: [UserID]) async throws -> InsertOutcome {
        let document: [UInt8]
        do {
            document = try MessageDocument.encode(message, pendingFor: recipients).encoded()
        } catch {
            // Only client-supplied attachment objects can hold such a field name.
            throw ChatError(.badRequest, "the message cannot be stored: \(error); remove the NUL character from the attachment's field names")
        }
        let write = await withCheckedContinuation { (continuation: CheckedContinuation<Result<InsertRequest.Write, ChatError>, Never>) in
            let request = InsertRequest(document: document, chatID: message.chatID, messageID: message.id) { continuation.resume(returning: $0) }
            self.enqueue(request, in: self.inserts) { self.write($0) }
        }
        switch write {
        case .failure(let error):
            throw error
        case .success(.inserted):
            return .inserted
        case .success(.duplicateKey(let writeError)):
            if let clientMessageID = message.clientMessageID,
                let first = try await self.findMessages(
                    [
                        "senderId": .string(message.senderID.rawValue), "chatId": .string(message.chatID.rawValue),
                        "clientMessageId": .string(clientMessageID),
                    ],
                    sort: nil,
                    limit: 1
                ).first
            {
                return .duplicate(first)
            }
            throw Self.chatError(writeError)
        }
    }

    /// Writes a batch of inserts and tells each caller. Runs on one of the store's threads.
    private func write(_ batch: [InsertRequest]) {
        for (request, result) in zip(batch, self.results(of: batch)) { request.complete(result) }
    }

    /// One `insert` command for the batch (unordered: one refused document does not stop the others), then one
    /// `update` setting each chat's `lastMessage` to its newest message in the batch.
    private func results(of batch: [InsertRequest]) -> [Result<InsertRequest.Write, ChatError>] {
        let reply: BSONDocument
        do {
            try self.prepareIfNeeded()
            reply = try self.pool.command([
                "insert": .string("messages"), "documents": .array(batch.map { .encoded($0.document) }), "ordered": .bool(false),
            ])
        } catch {
            return Array(repeating: .failure(error.chatError), count: batch.count)
        }
        var results = [Result<InsertRequest.Write, ChatError>](repeating: .success(.inserted), count: batch.count)
        for case .document(let writeError) in reply["writeErrors"]?.array ?? [] {
            guard let index = writeError["index"]?.int.flatMap(Int.init(exactly:)), results.indices.contains(index) else {
                // An error that names no document: none of them can be trusted to be stored.
                return Array(repeating: .failure(Self.chatError(writeError)), count: batch.count)
            }
            results[index] = writeError["code"]?.int == 11000 ? .success(.duplicateKey(writeError)) : .failure(Self.chatError(writeError))
        }
        var newest: [ChatID: MessageID] = [:]
        for (entry, result) in zip(batch, results) {
            guard case .success(.inserted) = result else { continue }
            newest[entry.chatID] = max(newest[entry.chatID] ?? entry.messageID, entry.messageID)
        }
        guard !newest.isEmpty else { return results }
        // Only ever forward: concurrent sends reach the store in any order, so a batch may hold an older message of
        // a chat than one already written. Batches are written one at a time, so this process remembers the newest
        // id it wrote per chat and skips older ones. (A conditional update would also order several nodes' writes,
        // but nx-27017 neither compares ObjectIds with `$lt` nor has `$max` for a null lastMessage; across nodes
        // the last writer wins, as it did before.)
        let updates: [BSON] = self.newestWritten.withLock { written in
            if written.count > 100_000 { written.removeAll(keepingCapacity: true) }  // bounded; forgetting is rare and harmless
            return newest.compactMap { chat, id in
                if let previous = written[chat], previous >= id { return nil }
                written[chat] = id
                return .document(["q": .document(["_id": .string(chat.rawValue)]), "u": .document(["$set": .document(["lastMessage": .objectID(id)])])])
            }
        }
        guard !updates.isEmpty else { return results }
        do {
            let answer = try self.pool.command(["update": .string("chats"), "updates": .array(updates), "ordered": .bool(false)])
            if let writeError = answer["writeErrors"]?.array?.first?.document { throw Self.chatError(writeError) }
        } catch {
            // The messages are stored: they are sent. Only the chats' summary lags until their next message.
            self.logger.warning(
                "Stored messages, but could not update their chats' lastMessage",
                metadata: ["chat.count": "\(newest.count)", "error": "\(error)"]
            )
        }
        return results
    }

    public func markDelivered(_ marks: [DeliveryMark]) async throws {
        var seen = Set<String>()
        var updates: [BSON] = []
        for mark in marks where seen.insert("\(mark.messageID)|\(mark.userID)").inserted {
            let user = BSON.string(mark.userID.rawValue)
            // Guarded by the pending list: the recipient joins readBy in the same atomic update that clears them
            // from it, so a second mark matches nothing and readBy never holds a user twice. (Portable: nx-27017
            // mismatches `$ne`, `$nin` and `$nor` on paths into arrays of documents, and its `$push` of a document
            // turns the array's elements into JSON strings; an equality on `pendingFor` and `$addToSet` work on
            // both servers.)
            updates.append(.document([
                "q": .document(["_id": .objectID(mark.messageID), "pendingFor": user]),
                "u": .document([
                    "$addToSet": .document(["readBy": .document(["userId": user, "readAt": .date(mark.at)])]),
                    "$pull": .document(["pendingFor": user]),
                ]),
            ]))
        }
        guard !updates.isEmpty else { return }
        let reply = try await self.command(["update": .string("messages"), "updates": .array(updates), "ordered": .bool(false)], serialized: true)
        if let writeError = reply["writeErrors"]?.array?.first?.document { throw Self.chatError(writeError) }
    }

    public func recordOutcome(_ status: DeliveryStatus, messageID: MessageID, userID: UserID, at date: Date) async throws {
        let user = BSON.string(userID.rawValue)
        let outcome: BSONDocument = ["userId": user, "status": .string(status.rawValue), "at": .date(date)]
        // Only while still pending: a delivery that was confirmed stays delivered whatever the queue says later.
        _ = try await self.command(
            [
                "update": .string("messages"),
                "updates": .array([
                    .document([
                        "q": .document(["_id": .objectID(messageID), "pendingFor": user]),
                        "u": .document(["$pull": .document(["pendingFor": user]), "$addToSet": .document(["outcomes": .document(outcome)])]),
                    ])
                ]),
            ],
            serialized: true
        )
    }

    public func pendingMessages(for user: UserID, createdSince: Date, afterID: MessageID?, limit: Int) async throws -> [Message] {
        var filter: BSONDocument = ["pendingFor": .string(user.rawValue), "createdAt": .document(["$gte": .date(createdSince)])]
        if let afterID { filter.fields.append(("_id", .document(["$gt": .objectID(afterID)]))) }
        return try await self.findMessages(filter, sort: ["_id": .int(1)], limit: limit)
    }

    public func history(of chat: ChatID, before: MessageID?, limit: Int) async throws -> [Message] {
        var filter: BSONDocument = ["chatId": .string(chat.rawValue)]
        if let before { filter.fields.append(("_id", .document(["$lt": .objectID(before)]))) }
        return try await self.findMessages(filter, sort: ["_id": .int(-1)], limit: limit)
    }

    public func receipts(for messageID: MessageID) async throws -> [DeliveryReceipt] {
        guard let document = try await self.find("messages", ["_id": .objectID(messageID)], sort: nil, limit: 1).first else {
            return []
        }
        let message = try MessageDocument.decode(document)
        let outcomes = MessageDocument.outcomes(document)
        // Without the chat (deleted, or written elsewhere), everyone the message names is a recipient.
        let recipients = try await self.chat(message.chatID)?.participants
            ?? MessageDocument.pendingFor(document) + message.readBy.map(\.userID) + outcomes.map(\.userID)
        return DeliveryReceipt.receipts(of: message, recipients: recipients, outcomes: outcomes, readAt: MessageDocument.reads(document))
    }

    public func message(_ id: MessageID) async throws -> Message? {
        try await self.findMessages(["_id": .objectID(id)], sort: nil, limit: 1).first
    }

    /// The chat with `id`. Concurrent lookups (one per send) share one visit to a store thread and one `find`.
    public func chat(_ id: ChatID) async throws -> Chat? {
        try await withCheckedContinuation { (continuation: CheckedContinuation<Result<Chat?, ChatError>, Never>) in
            self.enqueue(ChatLookup(id: id) { continuation.resume(returning: $0) }, in: self.chatLookups) { self.lookUp($0) }
        }.get()
    }

    /// Finds the chats of a batch of lookups and tells each caller; a malformed chat fails only its own lookups.
    /// Runs on one of the store's threads.
    private func lookUp(_ batch: [ChatLookup]) {
        let ids = Array(Set(batch.map(\.id.rawValue))).sorted()
        let documents: [BSONDocument]
        do {
            let filter: BSON = ids.count == 1 ? .string(ids[0]) : .document(["$in": .array(ids.map(BSON.string))])
            documents = try self.findNow("chats", ["_id": filter], sort: nil, limit: ids.count)
        } catch {
            for lookup in batch { lookup.complete(.failure(Self.chatError(of: error))) }
            return
        }
        var chats: [String: Result<Chat?, ChatError>] = [:]
        for document in documents {
            guard let id = document["_id"]?.string else { continue }
            chats[id] = Result { try ChatDocument.decode(document) }.mapError(Self.chatError(of:))
        }
        for lookup in batch { lookup.complete(chats[lookup.id.rawValue] ?? .success(nil)) }
    }

    public func chats(of user: UserID) async throws -> [Chat] {
        // Not paged: the HTTP API caps the chats a user may create in (MAX_CHATS_PER_USER) by counting these.
        try await self.find("chats", ["participants": .string(user.rawValue)], sort: ["_id": .int(1)], limit: max(self.maxPageSize, 10_000))
            .map(ChatDocument.decode)
    }

    public func saveChat(_ chat: Chat) async throws {
        _ = try await self.command([
            "update": .string("chats"),
            "updates": .array([
                .document(["q": .document(["_id": .string(chat.id.rawValue)]), "u": .document(ChatDocument.encode(chat)), "upsert": .bool(true)])
            ]),
        ])
    }

    public func users(_ ids: [UserID]) async throws -> [UserID: User] {
        guard !ids.isEmpty else { return [:] }
        let documents = try await self.find(
            "users",
            ["_id": .document(["$in": .array(ids.map { .string($0.rawValue) })])],
            sort: nil,
            limit: ids.count
        )
        var users: [UserID: User] = [:]
        for document in documents {
            let user = try ChatDocument.decodeUser(document)
            users[user.id] = user
        }
        return users
    }

    public func saveUser(_ user: User) async throws {
        _ = try await self.command([
            "update": .string("users"),
            "updates": .array([
                .document([
                    "q": .document(["_id": .string(user.id.rawValue)]),
                    "u": .document(["$set": .document(["username": .string(user.username)])]),
                    "upsert": .bool(true),
                ])
            ]),
        ])
    }

    /// Which of `users` block `sender`. Concurrent lookups (one per send) share one visit to a store thread and
    /// one `find`.
    public func usersBlocking(_ sender: UserID, among users: [UserID]) async throws -> Set<UserID> {
        guard !users.isEmpty else { return [] }
        return try await withCheckedContinuation { (continuation: CheckedContinuation<Result<Set<UserID>, ChatError>, Never>) in
            let lookup = BlockerLookup(sender: sender, users: users) { continuation.resume(returning: $0) }
            self.enqueue(lookup, in: self.blockerLookups) { self.lookUp($0) }
        }.get()
    }

    /// Finds the users of a batch of lookups who block any of its senders, then answers each lookup with those of
    /// its users who block its sender. Runs on one of the store's threads.
    private func lookUp(_ batch: [BlockerLookup]) {
        let users = Array(Set(batch.flatMap { $0.users.map(\.rawValue) })).sorted()
        let senders = Array(Set(batch.map(\.sender.rawValue))).sorted()
        let documents: [BSONDocument]
        do {
            // Equality (or `$in`) on an array of strings matches any element (portable to nx-27017, as
            // `pendingFor` is).
            let blocked: BSON = senders.count == 1 ? .string(senders[0]) : .document(["$in": .array(senders.map(BSON.string))])
            documents = try self.findNow(
                "users",
                ["_id": .document(["$in": .array(users.map(BSON.string))]), "blocked": blocked],
                sort: nil,
                limit: users.count
            )
        } catch {
            for lookup in batch { lookup.complete(.failure(Self.chatError(of: error))) }
            return
        }
        var blockedBy: [String: Set<String>] = [:]
        for document in documents {
            guard let id = document["_id"]?.string else { continue }
            blockedBy[id] = Set((document["blocked"]?.array ?? []).compactMap(\.string))
        }
        for lookup in batch {
            lookup.complete(.success(Set(lookup.users.filter { blockedBy[$0.rawValue]?.contains(lookup.sender.rawValue) == true })))
        }
    }

    public func blockedUsers(of user: UserID) async throws -> Set<UserID> {
        guard let document = try await self.find("users", ["_id": .string(user.rawValue)], sort: nil, limit: 1).first else { return [] }
        return Set((document["blocked"]?.array ?? []).compactMap { value in value.string.map { UserID($0) } })
    }

    public func setBlocked(_ other: UserID, by user: UserID, blocked: Bool) async throws {
        // Read, change, `$set` the whole list: nx-27017 ignores `$addToSet` on a document that lacks the array
        // (it reports a match and changes nothing). The list is per user and written only by that user's own
        // requests, so a lost update needs the same user blocking twice at the same instant.
        var list = try await self.blockedUsers(of: user)
        if blocked { list.insert(other) } else { list.remove(other) }
        let values = list.map(\.rawValue).sorted().map { BSON.string($0) }
        let reply = try await self.command([
            "update": .string("users"),
            "updates": .array([
                .document([
                    "q": .document(["_id": .string(user.rawValue)]),
                    "u": .document(["$set": .document(["blocked": .array(values)])]),
                    "upsert": .bool(true),
                ])
            ]),
        ])
        if let writeError = reply["writeErrors"]?.array?.first?.document { throw Self.chatError(writeError) }
    }

    // MARK: Commands

    private func findMessages(_ filter: BSONDocument, sort: BSONDocument?, limit: Int) async throws -> [Message] {
        try await self.find("messages", filter, sort: sort, limit: limit).map(MessageDocument.decode)
    }

    func find(_ collection: String, _ filter: BSONDocument, sort: BSONDocument?, limit: Int) async throws -> [BSONDocument] {
        try await self.run { _ in try self.findNow(collection, filter, sort: sort, limit: limit) }
    }

    /// Runs a `find` and returns its documents. Blocks: call it on the store's threads.
    private func findNow(_ collection: String, _ filter: BSONDocument, sort: BSONDocument?, limit: Int) throws -> [BSONDocument] {
        let limit = min(max(limit, 1), max(self.maxPageSize, limit))
        var command: BSONDocument = ["find": .string(collection), "filter": .document(filter)]
        if let sort { command.fields.append(("sort", .document(sort))) }
        command.fields += [("limit", .int(Int64(limit))), ("batchSize", .int(Int64(limit))), ("singleBatch", .bool(true))]
        try self.prepareIfNeeded()
        let reply = try self.pool.command(command)
        guard let batch = reply["cursor"]?.document?["firstBatch"]?.array else {
            throw ChatError(.internalError, "MongoDB answered find on \(collection) without a cursor: \(String(describing: reply).prefix(200))")
        }
        return batch.compactMap(\.document)
    }

    /// Queues `request`, and schedules a pump on a store thread that hands `queue`'s batches to `pump` until none
    /// wait; when the threads are gone, every waiting request fails with `unavailable` instead.
    private func enqueue<Request: BatchRequest>(_ request: Request, in queue: PumpQueue<Request>, pump: @escaping @Sendable ([Request]) -> Void) {
        guard queue.add(request) else { return }
        self.threads.submit(
            {
                while let batch = queue.takeBatch(maxCount: Request.maxBatchCount, maxWeight: Request.maxBatchWeight, weight: \.batchWeight) {
                    pump(batch)
                }
            },
            cancelled: { for request in queue.takeAll() { request.fail(ChatError(.unavailable, "the message store is closed")) } }
        )
    }

    /// Runs one command (internal: tests use it to write documents by hand); `serialized` commands run one at a
    /// time (see ``readByWrites``).
    func command(_ command: BSONDocument, serialized: Bool = false) async throws -> BSONDocument {
        try await self.run { pool in
            try self.prepareIfNeeded()
            guard serialized else { return try pool.command(command) }
            // Blocking here is fine: this is one of the store's own threads, never the cooperative pool.
            return try self.readByWrites.withLock { _ in try pool.command(command) }
        }
    }


    /// Creates the indexes unless done already. Blocks: call it on the store's threads.
    private func prepareIfNeeded() throws(MongoStoreError) {
        guard !self.indexesReady.withLock({ $0 }) else { return }
        try Self.createIndexes(self.pool)
        self.indexesReady.withLock { $0 = true }
    }

    private func run<Result: Sendable>(_ body: @escaping @Sendable (MongoClientPool) throws -> Result) async throws(ChatError) -> Result {
        try await self.threads.run { [pool] in try body(pool) }
    }

    /// Creates the indexes; createIndexes is idempotent for identical definitions.
    ///
    /// On MongoDB the history and catch-up indexes would end in `_id`; nx-27017 accepts such an index but then fails
    /// every insert ("JSON path error near '_id'"), so both end in `createdAt`, which orders like `_id` (ids are
    /// generated from the same clock) and which both servers accept.
    private static func createIndexes(_ pool: MongoClientPool) throws(MongoStoreError) {
        func index(_ name: String, _ key: BSONDocument, unique: Bool = false, partial: BSONDocument? = nil) -> BSON {
            var spec: BSONDocument = ["key": .document(key), "name": .string(name)]
            if unique { spec.fields.append(("unique", .bool(true))) }
            if let partial { spec.fields.append(("partialFilterExpression", .document(partial))) }
            return .document(spec)
        }
        _ = try pool.command([
            "createIndexes": .string("messages"),
            "indexes": .array([
                index("chat_history", ["chatId": .int(1), "createdAt": .int(-1)]),
                index("pending_catch_up", ["pendingFor": .int(1), "createdAt": .int(1)]),
                // Per sender and chat: the same client id in another chat is another message. (Stores made before
                // this had `idempotent_send` on sender and client id only; it is dropped below.)
                index(
                    "idempotent_send_per_chat",
                    ["senderId": .int(1), "chatId": .int(1), "clientMessageId": .int(1)],
                    unique: true,
                    partial: ["clientMessageId": .document(["$exists": .bool(true)])]
                ),
            ]),
        ])
        // The old per-sender key would still refuse a reused client id in another chat. Dropping an index that
        // does not exist is an error the server reports (IndexNotFound); that is the usual case, and fine.
        _ = try? pool.command(["dropIndexes": .string("messages"), "index": .string("idempotent_send")])
        // nx-27017 answers every equality query on an array field with nothing once a single-field index covers
        // that field (`{participants: 1}` made every user's chat list empty); a compound index starting with it
        // serves the same queries on MongoDB and works on nx-27017. The old single-field index is dropped.
        _ = try? pool.command(["dropIndexes": .string("chats"), "index": .string("participants")])
        _ = try pool.command([
            "createIndexes": .string("chats"),
            "indexes": .array([index("participants_by_name", ["participants": .int(1), "name": .int(1)])]),
        ])
        // Listing chats reads the marks of those chats (`chatId $in`): without an index, every mark of every chat.
        _ = try pool.command([
            "createIndexes": .string("readMarks"),
            "indexes": .array([index("marks_by_chat", ["chatId": .int(1), "userId": .int(1)])]),
        ])
    }

    /// An error thrown on a store thread, as the engine sees it (what ``BlockingThreads`` does for ``run(_:)``).
    private static func chatError(of error: any Error) -> ChatError {
        switch error {
        case let error as ChatError: error
        case let error as any AdapterError: error.chatError
        default: ChatError(.internalError, "\(error)", underlying: error)
        }
    }

    static func chatError(_ writeError: BSONDocument) -> ChatError {
        let code = writeError["code"]?.int.map(Int.init)
        let message = writeError["errmsg"]?.string ?? "write failed"
        let error = MongoStoreError(code: .serverError, message: "MongoDB refused the write: \(message)", serverCode: code)
        return ChatError(.internalError, error.message, underlying: error)
    }
}
