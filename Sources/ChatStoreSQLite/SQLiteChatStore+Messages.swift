public import ChatDomain
public import Foundation

/// The message store: messages, chats, users and block lists. Messages, chats and users are stored as their JSON
/// (the same as on the wire); what is looked up by is in columns of its own.
extension SQLiteChatStore {
    public func insert(_ message: Message, pendingFor recipients: [UserID]) async throws -> InsertOutcome {
        // In columns, not JSON: only attachments (free-form JSON) are encoded, and only when there are any.
        let attachments: SQLValue = message.attachments.isEmpty ? .null : .blob(try Self.encode(message.attachments))
        let created = Self.milliseconds(message.createdAt)
        let outcome = try await self.write { db in
            if let clientID = message.clientMessageID {
                let first = try Self.messages(
                    where: "chat_id = ? AND sender = ? AND client_id = ?",
                    [.text(message.chatID.rawValue), .text(message.senderID.rawValue), .text(clientID)],
                    in: db
                )
                if let duplicate = first.first { return InsertOutcome.duplicate(duplicate) }
            }
            let id = message.id.hexString
            try db.run(
                """
                INSERT INTO messages (id, chat_id, sender, client_id, created_ms, content, type, attachments, reply_to)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [.text(id), .text(message.chatID.rawValue), .text(message.senderID.rawValue), message.clientMessageID.map(SQLValue.text) ?? .null,
                 .integer(created), .text(message.content), .text(message.messageType.rawValue), attachments,
                 message.replyTo.map { .text($0.hexString) } ?? .null]
            )
            for receipt in message.readBy {
                try db.run(
                    "INSERT OR IGNORE INTO reads (message_id, user_id, at_ms) VALUES (?, ?, ?)",
                    [.text(id), .text(receipt.userID.rawValue), .integer(Self.milliseconds(receipt.readAt))]
                )
            }
            for recipient in Set(recipients) {
                try db.run("INSERT OR IGNORE INTO pending (user_id, message_id, created_ms) VALUES (?, ?, ?)", [.text(recipient.rawValue), .text(id), .integer(created)])
            }
            // Forward only: a batch can commit an older message of a chat after a newer one.
            try db.run(
                "UPDATE chats SET last_message = ?1 WHERE id = ?2 AND (last_message IS NULL OR last_message < ?1)",
                [.text(id), .text(message.chatID.rawValue)]
            )
            return InsertOutcome.inserted
        }
        if outcome == .inserted {
            self.chatCache.update(message.chatID) { entry in
                guard case .some(.some(var chat)) = entry, chat.lastMessage.map({ $0 < message.id }) ?? true else { return }
                chat.lastMessage = message.id
                entry = .some(chat)
            }
        }
        return outcome
    }

    public func markDelivered(_ marks: [DeliveryMark]) async throws {
        guard !marks.isEmpty else { return }
        try await self.write { db in
            for mark in marks {
                // Only a recipient still pending joins readBy, in the same step that clears them. readBy beyond the
                // sender's own receipt lives in `reads`, so a mark writes two small rows and no JSON.
                let cleared = try db.run("DELETE FROM pending WHERE user_id = ? AND message_id = ?", [.text(mark.userID.rawValue), .text(mark.messageID.hexString)])
                guard cleared > 0 else { continue }
                try db.run(
                    "INSERT OR IGNORE INTO reads (message_id, user_id, at_ms) VALUES (?, ?, ?)",
                    [.text(mark.messageID.hexString), .text(mark.userID.rawValue), .integer(Self.milliseconds(mark.at))]
                )
            }
        }
    }

    public func recordOutcome(_ status: DeliveryStatus, messageID: MessageID, userID: UserID, at date: Date) async throws {
        try await self.write { db in
            let cleared = try db.run("DELETE FROM pending WHERE user_id = ? AND message_id = ?", [.text(userID.rawValue), .text(messageID.hexString)])
            guard cleared > 0 else { return }
            try db.run(
                "INSERT OR REPLACE INTO outcomes (message_id, user_id, status, at_ms) VALUES (?, ?, ?, ?)",
                [.text(messageID.hexString), .text(userID.rawValue), .text(status.rawValue), .integer(Self.milliseconds(date))]
            )
        }
    }

    public func pendingMessages(for user: UserID, createdSince: Date, afterID: MessageID?, limit: Int) async throws -> [Message] {
        guard limit > 0 else { return [] }
        return try await self.read { db in
            try Self.messages(
                where: """
                    id IN (SELECT message_id FROM pending WHERE user_id = ? AND message_id > ? AND created_ms >= ?
                    ORDER BY message_id LIMIT ?) ORDER BY id
                    """,
                [.text(user.rawValue), .text(afterID?.hexString ?? ""), .integer(Self.milliseconds(createdSince)), .integer(Int64(limit))],
                in: db
            )
        }
    }

    public func history(of chat: ChatID, before: MessageID?, limit: Int) async throws -> [Message] {
        guard limit > 0 else { return [] }
        return try await self.read { db in
            let upper = before?.hexString ?? String(repeating: "g", count: 24)  // above every hex id
            return try Self.messages(
                where: "chat_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                [.text(chat.rawValue), .text(upper), .integer(Int64(limit))],
                in: db
            )
        }
    }

    public func receipts(for messageID: MessageID) async throws -> [DeliveryReceipt] {
        try await self.read { db in
            guard let message = try Self.message(messageID, in: db) else { return [] }
            var outcomes: [DeliveryReceipt] = []
            try db.run("SELECT user_id, status, at_ms FROM outcomes WHERE message_id = ?", [.text(messageID.hexString)]) { row in
                outcomes.append(DeliveryReceipt(
                    userID: UserID(row.text(0) ?? ""),
                    status: DeliveryStatus(rawValue: row.text(1) ?? ""),
                    at: Self.date(row.integer(2))
                ))
            }
            var recipients: [UserID]
            if let chat = try self.chat(message.chatID, in: db) {
                recipients = chat.participants
            } else {
                // Without the chat, everyone the message names is a recipient.
                recipients = []
                try db.run("SELECT user_id FROM pending WHERE message_id = ?", [.text(messageID.hexString)]) { row in recipients.append(UserID(row.text(0) ?? "")) }
                recipients += message.readBy.map(\.userID) + outcomes.map(\.userID)
            }
            var readAt: [UserID: Date] = [:]
            try db.run("SELECT user_id, at_ms FROM message_reads WHERE message_id = ?", [.text(messageID.hexString)]) { row in
                readAt[UserID(row.text(0) ?? "")] = Self.date(row.integer(1))
            }
            return DeliveryReceipt.receipts(of: message, recipients: recipients, outcomes: outcomes, readAt: readAt)
        }
    }

    public func markRead(_ mark: ReadMark) async throws -> ReadMarkOutcome {
        try await self.write { db in
            let chat = SQLValue.text(mark.chatID.rawValue)
            let user = SQLValue.text(mark.userID.rawValue)
            var current: ReadMark?
            try db.run("SELECT message_id, at_ms FROM read_marks WHERE chat_id = ? AND user_id = ?", [chat, user]) { row in
                guard let id = row.text(0).flatMap(MessageID.init(hex:)) else { return }
                current = ReadMark(chatID: mark.chatID, userID: mark.userID, messageID: id, readAt: Self.date(row.integer(1)))
            }
            if let current, current.messageID >= mark.messageID { return .unchanged(current) }
            let at = SQLValue.integer(Self.milliseconds(mark.readAt))
            try db.run(
                """
                INSERT OR IGNORE INTO message_reads (message_id, user_id, at_ms)
                SELECT id, ?, ? FROM messages WHERE chat_id = ? AND id > ? AND id <= ?
                """,
                [user, at, chat, .text(current?.messageID.hexString ?? ""), .text(mark.messageID.hexString)]
            )
            try db.run(
                "INSERT OR REPLACE INTO read_marks (chat_id, user_id, message_id, at_ms) VALUES (?, ?, ?, ?)",
                [chat, user, .text(mark.messageID.hexString), at]
            )
            return .advanced(mark)
        }
    }

    public func readState(of chats: [ChatID], for user: UserID) async throws -> [ChatID: ChatReadState] {
        try await self.read { db in
            var result: [ChatID: ChatReadState] = [:]
            for chat in chats {
                var marks: [UserID: MessageID] = [:]
                try db.run("SELECT user_id, message_id FROM read_marks WHERE chat_id = ?", [.text(chat.rawValue)]) { row in
                    if let id = row.text(1).flatMap(MessageID.init(hex:)) { marks[UserID(row.text(0) ?? "")] = id }
                }
                let unread = try db.integer(
                    "SELECT count(*) FROM messages WHERE chat_id = ? AND id > ? AND sender != ?",
                    [.text(chat.rawValue), .text(marks[user]?.hexString ?? ""), .text(user.rawValue)]
                ) ?? 0
                result[chat] = ChatReadState(unreadCount: Int(unread), readUpTo: marks)
            }
            return result
        }
    }

    public func message(_ id: MessageID) async throws -> Message? {
        try await self.read { db in try Self.message(id, in: db) }
    }

    public func chat(_ id: ChatID) async throws -> Chat? {
        if let cached = self.chatCache.value(id) { return cached }
        let generation = self.chatCache.generation
        let chat = try await self.read { db in try self.chat(id, in: db) }
        self.chatCache.fill([id: chat], readAt: generation)
        return chat
    }

    public func chats(of user: UserID) async throws -> [Chat] {
        try await self.read { db in
            var chats: [Chat] = []
            try db.run(
                "SELECT c.json, c.last_message FROM chat_members m JOIN chats c ON c.id = m.chat_id WHERE m.user_id = ? ORDER BY c.id",
                [.text(user.rawValue)]
            ) { row in chats.append(try Self.chat(json: row.blob(0), lastMessage: row.text(1))) }
            return chats
        }
    }

    public func saveChat(_ chat: Chat) async throws {
        let json = try Self.encode(chat)
        try await self.write { db in
            try db.run(
                "INSERT INTO chats (id, json, last_message) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET json = ?2, last_message = ?3",
                [.text(chat.id.rawValue), .blob(json), chat.lastMessage.map { .text($0.hexString) } ?? .null]
            )
            try db.run("DELETE FROM chat_members WHERE chat_id = ?", [.text(chat.id.rawValue)])
            for participant in Set(chat.participants) {
                try db.run("INSERT INTO chat_members (user_id, chat_id) VALUES (?, ?)", [.text(participant.rawValue), .text(chat.id.rawValue)])
            }
        }
        self.chatCache.update(chat.id) { $0 = .some(chat) }
    }

    public func users(_ ids: [UserID]) async throws -> [UserID: User] {
        guard !ids.isEmpty else { return [:] }
        return try await self.read { db in
            var users: [UserID: User] = [:]
            for chunk in Self.chunks(Array(Set(ids))) {
                try db.run("SELECT json FROM users WHERE id IN (\(Self.placeholders(chunk.count)))", chunk.map { .text($0.rawValue) }) { row in
                    let user = try Self.decode(User.self, row.blob(0))
                    users[user.id] = user
                }
            }
            return users
        }
    }

    public func saveUser(_ user: User) async throws {
        let json = try Self.encode(user)
        try await self.write { db in
            try db.run("INSERT INTO users (id, json) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET json = ?2 WHERE json != ?2", [.text(user.id.rawValue), .blob(json)])
        }
    }

    public func usersBlocking(_ sender: UserID, among users: [UserID]) async throws -> Set<UserID> {
        guard !users.isEmpty else { return [] }
        let lists = try await self.blockLists(of: users)
        return Set(users.filter { lists[$0]?.contains(sender) == true })
    }

    public func blockedUsers(of user: UserID) async throws -> Set<UserID> {
        try await self.blockLists(of: [user])[user] ?? []
    }

    public func setBlocked(_ other: UserID, by user: UserID, blocked: Bool) async throws {
        try await self.write { db in
            if blocked {
                try db.run("INSERT OR IGNORE INTO blocks (user_id, blocked) VALUES (?, ?)", [.text(user.rawValue), .text(other.rawValue)])
            } else {
                try db.run("DELETE FROM blocks WHERE user_id = ? AND blocked = ?", [.text(user.rawValue), .text(other.rawValue)])
            }
        }
        self.blockCache.update(user) { list in
            guard list != nil else { return }
            if blocked { list?.insert(other) } else { list?.remove(other) }
        }
    }

    /// The block lists of `users`, from memory where cached, the rest in one read.
    private func blockLists(of users: [UserID]) async throws -> [UserID: Set<UserID>] {
        var lists: [UserID: Set<UserID>] = [:]
        var missing: [UserID] = []
        for user in Set(users) {
            if let list = self.blockCache.value(user) { lists[user] = list } else { missing.append(user) }
        }
        guard !missing.isEmpty else { return lists }
        let generation = self.blockCache.generation
        let read = try await self.read { [missing] db in
            var found = Dictionary(uniqueKeysWithValues: missing.map { ($0, Set<UserID>()) })
            for chunk in Self.chunks(missing) {
                try db.run(
                    "SELECT user_id, blocked FROM blocks WHERE user_id IN (\(Self.placeholders(chunk.count)))",
                    chunk.map { .text($0.rawValue) }
                ) { row in found[UserID(row.text(0) ?? ""), default: []].insert(UserID(row.text(1) ?? "")) }
            }
            return found
        }
        self.blockCache.fill(read, readAt: generation)
        return lists.merging(read) { $1 }
    }

    // MARK: Helpers

    private static func message(_ id: MessageID, in db: SQLiteConnection) throws -> Message? {
        try Self.messages(where: "id = ?", [.text(id.hexString)], in: db).first
    }

    /// The messages a `WHERE` clause (with its ordering and limit) selects, each with its `readBy` from `reads`
    /// (in the order they were read).
    private static func messages(where clause: String, _ arguments: [SQLValue], in db: SQLiteConnection) throws -> [Message] {
        var messages: [Message] = []
        try db.run(
            "SELECT id, chat_id, sender, client_id, created_ms, content, type, attachments, reply_to FROM messages WHERE \(clause)",
            arguments
        ) { row in
            guard let id = row.text(0).flatMap({ MessageID(hex: $0) }) else {
                throw SQLiteStoreError(code: .statementFailed, message: "a stored message has no valid id")
            }
            messages.append(Message(
                id: id,
                chatID: ChatID(row.text(1) ?? ""),
                senderID: UserID(row.text(2) ?? ""),
                content: row.text(5) ?? "",
                messageType: MessageType(rawValue: row.text(6) ?? "text"),
                attachments: row.isNull(7) ? [] : try Self.decode([JSONValue].self, row.blob(7)),
                replyTo: row.text(8).flatMap { MessageID(hex: $0) },
                createdAt: Self.date(row.integer(4)),
                clientMessageID: row.text(3)
            ))
        }
        guard !messages.isEmpty else { return [] }
        var reads: [String: [ReadReceipt]] = [:]
        for chunk in Self.chunks(messages.map(\.id.hexString)) {
            try db.run(
                "SELECT message_id, user_id, at_ms FROM reads WHERE message_id IN (\(Self.placeholders(chunk.count))) ORDER BY at_ms, user_id",
                chunk.map { .text($0) }
            ) { row in
                reads[row.text(0) ?? "", default: []].append(ReadReceipt(userID: UserID(row.text(1) ?? ""), readAt: Self.date(row.integer(2))))
            }
        }
        return messages.map { message in
            var message = message
            message.readBy = reads[message.id.hexString] ?? []
            return message
        }
    }

    private func chat(_ id: ChatID, in db: SQLiteConnection) throws -> Chat? {
        var chat: Chat?
        try db.run("SELECT json, last_message FROM chats WHERE id = ?", [.text(id.rawValue)]) { row in
            chat = try Self.chat(json: row.blob(0), lastMessage: row.text(1))
        }
        return chat
    }

    private static func chat(json: Data, lastMessage: String?) throws -> Chat {
        var chat = try Self.decode(Chat.self, json)
        chat.lastMessage = lastMessage.flatMap { MessageID(hex: $0) }
        return chat
    }

    static func encode(_ value: some Encodable) throws -> Data {
        try JSONEncoder().encode(value)
    }

    static func decode<Value: Decodable>(_ type: Value.Type, _ data: Data) throws -> Value {
        try JSONDecoder().decode(type, from: data)
    }

    static func milliseconds(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
    }

    static func date(_ milliseconds: Int64) -> Date {
        Date(timeIntervalSince1970: TimeInterval(milliseconds) / 1000)
    }

    /// At most 500 ids per `IN` list (SQLite allows 32,766 parameters; a shorter list keeps statements cacheable).
    static func chunks<Element>(_ values: [Element]) -> [[Element]] {
        stride(from: 0, to: values.count, by: 500).map { Array(values[$0..<min($0 + 500, values.count)]) }
    }

    static func placeholders(_ count: Int) -> String {
        Array(repeating: "?", count: count).joined(separator: ", ")
    }
}

extension SQLiteChatStore: MessageContentRewriting {
    public func storedMessages(after: MessageID?, limit: Int) async throws -> [Message] {
        guard limit > 0 else { return [] }
        return try await self.read { db in
            try Self.messages(where: "id > ? ORDER BY id LIMIT ?", [.text(after?.hexString ?? ""), .integer(Int64(limit))], in: db)
        }
    }

    public func replaceContent(of message: Message) async throws {
        let attachments: SQLValue = message.attachments.isEmpty ? .null : .blob(try Self.encode(message.attachments))
        try await self.write { db in
            _ = try db.run("UPDATE messages SET content = ?, attachments = ? WHERE id = ?", [.text(message.content), attachments, .text(message.id.hexString)])
        }
    }
}
