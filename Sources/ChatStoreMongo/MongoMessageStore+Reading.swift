public import ChatDomain
import Foundation

/// Read marks and the receipts webhook's outbox.
///
/// A reader's mark lives in `readMarks` (one document per chat and reader, its message id as hex so that the
/// compare-and-set below is a string equality, which nx-27017 matches); each message it covers gets the time in
/// `reads.<reader>`. The messages are written first: a crash between the two writes leaves the mark behind, and
/// the next `message:read` covers them again (only messages without a time get one).
extension MongoMessageStore {
    public func markRead(_ mark: ReadMark) async throws -> ReadMarkOutcome {
        let key = "\(mark.chatID.rawValue.utf8.count):\(mark.chatID.rawValue)\(mark.userID.rawValue)"
        let field = MessageDocument.readField(mark.userID)
        // A concurrent mark of the same reader can win the compare-and-set; a few rounds settle it.
        for _ in 0..<8 {
            let current = try await self.find("readMarks", ["_id": .string(key)], sort: nil, limit: 1).first.flatMap { Self.readMark($0, mark) }
            if let current, current.messageID >= mark.messageID { return .unchanged(current) }
            _ = try await self.command([
                "update": .string("messages"),
                "updates": .array([
                    .document([
                        "q": .document([
                            "chatId": .string(mark.chatID.rawValue),
                            "_id": .document(["$lte": .objectID(mark.messageID)]),
                            field: .document(["$exists": .bool(false)]),
                        ]),
                        "u": .document(["$set": .document([field: .int(Int64((mark.readAt.timeIntervalSince1970 * 1000).rounded()))])]),
                        "multi": .bool(true),
                    ])
                ]),
            ])
            let document: BSONDocument = [
                "chatId": .string(mark.chatID.rawValue), "userId": .string(mark.userID.rawValue),
                "mark": .string(mark.messageID.hexString), "readAt": .date(mark.readAt),
            ]
            if let current {
                let reply = try await self.command([
                    "update": .string("readMarks"),
                    "updates": .array([
                        .document(["q": .document(["_id": .string(key), "mark": .string(current.messageID.hexString)]), "u": .document(document)])
                    ]),
                ])
                if let writeError = reply["writeErrors"]?.array?.first?.document { throw Self.chatError(writeError) }
                if reply["n"]?.int == 1 { return .advanced(mark) }
            } else {
                var inserted = document
                inserted.fields.insert(("_id", .string(key)), at: 0)
                let reply = try await self.command(["insert": .string("readMarks"), "documents": .array([.document(inserted)])])
                guard let writeError = reply["writeErrors"]?.array?.first?.document else { return .advanced(mark) }
                if writeError["code"]?.int != 11000 { throw Self.chatError(writeError) }
            }
        }
        throw ChatError(.unavailable, "the read mark of \(mark.userID) in chat \(mark.chatID) kept changing under this write; try again")
    }

    public func readState(of chats: [ChatID], for user: UserID) async throws -> [ChatID: ChatReadState] {
        guard !chats.isEmpty else { return [:] }
        var marks: [ChatID: [UserID: MessageID]] = [:]
        let documents = try await self.find(
            "readMarks",
            ["chatId": .document(["$in": .array(chats.map { .string($0.rawValue) })])],
            sort: nil,
            limit: 1_000_000
        )
        for document in documents {
            guard let chat = document["chatId"]?.string, let reader = document["userId"]?.string,
                let id = document["mark"]?.string.flatMap(MessageID.init(hex:))
            else { continue }
            marks[ChatID(chat), default: [:]][UserID(reader)] = id
        }
        var result: [ChatID: ChatReadState] = [:]
        for chat in chats {
            // Messages from others that no mark of `user` covered: the ones without their read time.
            let reply = try await self.command([
                "count": .string("messages"),
                "query": .document([
                    "chatId": .string(chat.rawValue),
                    MessageDocument.readField(user): .document(["$exists": .bool(false)]),
                    "senderId": .document(["$ne": .string(user.rawValue)]),
                ]),
            ])
            result[chat] = ChatReadState(unreadCount: Int(reply["n"]?.int ?? 0), readUpTo: marks[chat] ?? [:])
        }
        return result
    }

    private static func readMark(_ document: BSONDocument, _ template: ReadMark) -> ReadMark? {
        guard let id = document["mark"]?.string.flatMap(MessageID.init(hex:)), let at = document["readAt"]?.date else { return nil }
        return ReadMark(chatID: template.chatID, userID: template.userID, messageID: id, readAt: at)
    }
}

/// The receipts webhook's outbox as the collection `receiptOutbox`, one document per event keyed by its id.
extension MongoMessageStore: ReceiptOutbox {
    public func append(_ events: [ReceiptEvent]) async throws -> Int {
        guard !events.isEmpty else { return 0 }
        let documents: [BSON] = events.map { event in
            .document([
                "_id": .string(event.id.hexString), "type": .string(event.kind.rawValue), "messageId": .string(event.messageID.hexString),
                "chatId": .string(event.chatID.rawValue), "userId": .string(event.userID.rawValue), "at": .date(event.at),
            ])
        }
        // Unordered: an id written already (a retried append) is a duplicate key and skipped.
        let reply = try await self.command(["insert": .string("receiptOutbox"), "documents": .array(documents), "ordered": .bool(false)])
        if let writeError = reply["writeErrors"]?.array?.compactMap(\.document).first(where: { $0["code"]?.int != 11000 }) {
            throw Self.chatError(writeError)
        }
        let overflow = try await self.count() - self.capacity
        guard overflow > 0 else { return 0 }
        let oldest = try await self.find("receiptOutbox", [:], sort: ["_id": .int(1)], limit: overflow).compactMap { $0["_id"]?.string }
        try await self.removeOutbox(oldest)
        return oldest.count
    }

    public func oldest(_ limit: Int) async throws -> [ReceiptEvent] {
        guard limit > 0 else { return [] }
        return try await self.find("receiptOutbox", [:], sort: ["_id": .int(1)], limit: limit).compactMap { document in
            guard let id = document["_id"]?.string.flatMap(MessageID.init(hex:)),
                let message = document["messageId"]?.string.flatMap(MessageID.init(hex:)),
                let kind = document["type"]?.string, let chat = document["chatId"]?.string, let user = document["userId"]?.string,
                let at = document["at"]?.date
            else { return nil }
            return ReceiptEvent(id: id, kind: .init(rawValue: kind), messageID: message, chatID: ChatID(chat), userID: UserID(user), at: at)
        }
    }

    public func remove(_ ids: [MessageID]) async throws {
        try await self.removeOutbox(ids.map(\.hexString))
    }

    public func count() async throws -> Int {
        let reply = try await self.command(["count": .string("receiptOutbox"), "query": .document([:])])
        return Int(reply["n"]?.int ?? 0)
    }

    private func removeOutbox(_ ids: [String]) async throws {
        guard !ids.isEmpty else { return }
        let reply = try await self.command([
            "delete": .string("receiptOutbox"),
            "deletes": .array([.document(["q": .document(["_id": .document(["$in": .array(ids.map(BSON.string))])]), "limit": .int(0)])]),
        ])
        if let writeError = reply["writeErrors"]?.array?.first?.document { throw Self.chatError(writeError) }
    }
}

/// `chatd reencrypt`'s access: messages in id order, content and attachments replaced in place.
extension MongoMessageStore: MessageContentRewriting {
    public func storedMessages(after: MessageID?, limit: Int) async throws -> [Message] {
        let filter: BSONDocument = after.map { ["_id": .document(["$gt": .objectID($0)])] } ?? [:]
        return try await self.find("messages", filter, sort: ["_id": .int(1)], limit: limit).map(MessageDocument.decode)
    }

    public func replaceContent(of message: Message) async throws {
        let reply = try await self.command([
            "update": .string("messages"),
            "updates": .array([
                .document([
                    "q": .document(["_id": .objectID(message.id)]),
                    "u": .document(["$set": .document([
                        "content": .string(message.content), "attachments": .array(message.attachments.map(MessageDocument.bson)),
                    ])]),
                ])
            ]),
        ])
        if let writeError = reply["writeErrors"]?.array?.first?.document { throw Self.chatError(writeError) }
    }
}
