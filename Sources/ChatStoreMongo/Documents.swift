import ChatDomain
import Foundation

/// Maps messages to and from their documents; a missing or mistyped field is an error naming it, never a crash.
enum MessageDocument {
    static func encode(_ message: Message, pendingFor recipients: [UserID]) -> BSONDocument {
        var document: BSONDocument = [
            "_id": .objectID(message.id),
            "chatId": .string(message.chatID.rawValue),
            "senderId": .string(message.senderID.rawValue),
            "content": .string(message.content),
            "messageType": .string(message.messageType.rawValue),
            "attachments": .array(message.attachments.map(Self.bson)),
            "replyTo": message.replyTo.map(BSON.objectID) ?? .null,
            "readBy": .array(message.readBy.map { .document(["userId": .string($0.userID.rawValue), "readAt": .date($0.readAt)]) }),
            "createdAt": .date(message.createdAt),
            "pendingFor": .array(recipients.map { .string($0.rawValue) }),
            "outcomes": .array([]),
        ]
        // Absent rather than null, so the partial unique index covers only messages that have one.
        if let clientMessageID = message.clientMessageID {
            document.fields.append(("clientMessageId", .string(clientMessageID)))
        }
        return document
    }

    static func decode(_ document: BSONDocument) throws -> Message {
        let id = try field(document, "_id", \.objectID, "an ObjectId")
        let context = "message \(id)"
        var readBy: [ReadReceipt] = []
        for (index, entry) in (try field(document, "readBy", \.array, "an array", context: context)).enumerated() {
            guard let receipt = entry.document else { throw bad("readBy.\(index)", "a document", context) }
            readBy.append(
                ReadReceipt(
                    userID: UserID(try field(receipt, "userId", \.string, "a string", context: context)),
                    readAt: try field(receipt, "readAt", \.date, "a date", context: context)
                )
            )
        }
        let replyTo: MessageID?
        switch document["replyTo"] {
        case nil, .null?: replyTo = nil
        case .objectID(let value)?: replyTo = value
        default: throw bad("replyTo", "an ObjectId or null", context)
        }
        return Message(
            id: id,
            chatID: ChatID(try field(document, "chatId", \.string, "a string", context: context)),
            senderID: UserID(try field(document, "senderId", \.string, "a string", context: context)),
            content: try field(document, "content", \.string, "a string", context: context),
            messageType: MessageType(rawValue: document["messageType"]?.string ?? MessageType.text.rawValue),
            attachments: (document["attachments"]?.array ?? []).map(Self.json),
            replyTo: replyTo,
            readBy: readBy,
            createdAt: try field(document, "createdAt", \.date, "a date", context: context),
            clientMessageID: document["clientMessageId"]?.string
        )
    }

    /// The field of a message that holds when `user`'s read mark first covered it, in milliseconds since 1970:
    /// `reads.<the user id's UTF-8 in hex>` (a user id may hold dots or a `$`; nx-27017 turns a date set through a
    /// path into a string, an integer survives).
    static func readField(_ user: UserID) -> String {
        "reads." + user.rawValue.utf8.map { String(format: "%02x", $0) }.joined()
    }

    /// When each reader's mark first covered the message.
    static func reads(_ document: BSONDocument) -> [UserID: Date] {
        var result: [UserID: Date] = [:]
        for (key, value) in document["reads"]?.document?.fields ?? [] {
            guard let milliseconds = value.int, let user = Self.user(hex: key) else { continue }
            result[user] = Date(timeIntervalSince1970: Double(milliseconds) / 1000)
        }
        return result
    }

    private static func user(hex: String) -> UserID? {
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2, limitedBy: hex.endIndex) ?? hex.endIndex
            guard let byte = UInt8(hex[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        return String(validating: bytes, as: UTF8.self).map { UserID($0) }
    }

    static func pendingFor(_ document: BSONDocument) -> [UserID] {
        (document["pendingFor"]?.array ?? []).compactMap(\.string).map { UserID($0) }
    }

    static func outcomes(_ document: BSONDocument) -> [DeliveryReceipt] {
        (document["outcomes"]?.array ?? []).compactMap(\.document).compactMap { outcome in
            guard let user = outcome["userId"]?.string, let status = outcome["status"]?.string, let at = outcome["at"]?.date
            else { return nil }
            return DeliveryReceipt(userID: UserID(user), status: DeliveryStatus(rawValue: status), at: at)
        }
    }

    static func bson(_ value: JSONValue) -> BSON {
        switch value {
        case .null: .null
        case .bool(let value): .bool(value)
        case .number(let value): .double(value)
        case .string(let value): .string(value)
        case .array(let values): .array(values.map(Self.bson))
        case .object(let fields): .document(BSONDocument(fields.sorted { $0.key < $1.key }.map { ($0.key, Self.bson($0.value)) }))
        }
    }

    static func json(_ value: BSON) -> JSONValue {
        switch value {
        case .null: .null
        case .bool(let value): .bool(value)
        case .int(let value): .number(Double(value))
        case .double(let value): .number(value)
        case .string(let value): .string(value)
        case .date(let value): .string(Timestamp.string(from: value))
        case .objectID(let value): .string(value.hexString)
        case .array(let values): .array(values.map(Self.json))
        case .document(let document): .object(Dictionary(document.fields.map { ($0.key, Self.json($0.value)) }, uniquingKeysWith: { $1 }))
        case .other, .encoded: .null
        }
    }
}

/// Maps chats and users to and from their documents.
enum ChatDocument {
    static func encode(_ chat: Chat) -> BSONDocument {
        [
            "_id": .string(chat.id.rawValue),
            "participants": .array(chat.participants.map { .string($0.rawValue) }),
            "name": chat.name.map(BSON.string) ?? .null,
            "lastMessage": chat.lastMessage.map(BSON.objectID) ?? .null,
            "invited": .array(chat.invited.map { .string($0.rawValue) }),
            "encrypted": .bool(chat.encrypted),
        ]
    }

    static func decode(_ document: BSONDocument) throws -> Chat {
        let id = try field(document, "_id", \.string, "a string")
        let participants = try field(document, "participants", \.array, "an array", context: "chat \(id)")
        return Chat(
            id: ChatID(id),
            participants: try participants.map { value in
                guard let user = value.string else { throw bad("participants", "an array of strings", "chat \(id)") }
                return UserID(user)
            },
            name: document["name"]?.string,
            lastMessage: document["lastMessage"]?.objectID,
            // Chats stored before invitations existed have none.
            invited: (document["invited"]?.array ?? []).compactMap { value in value.string.map { UserID($0) } },
            encrypted: document["encrypted"] == .bool(true)
        )
    }

    static func decodeUser(_ document: BSONDocument) throws -> User {
        let id = try field(document, "_id", \.string, "a string")
        // A user first written by a block-list change has no username yet: its id stands in, as on first use.
        guard document["username"] != nil else { return User(id: UserID(id), username: id) }
        return User(id: UserID(id), username: try field(document, "username", \.string, "a string", context: "user \(id)"))
    }
}

private func field<Value>(
    _ document: BSONDocument,
    _ name: String,
    _ extract: (BSON) -> Value?,
    _ expected: String,
    context: String = "document"
) throws -> Value {
    guard let value = document[name] else {
        throw ChatError(.internalError, "\(context): field '\(name)' is missing", underlying: MongoStoreError(code: .badDocument, message: "field '\(name)' is missing"))
    }
    guard let typed = extract(value) else { throw bad(name, expected, context) }
    return typed
}

private func bad(_ name: String, _ expected: String, _ context: String) -> ChatError {
    let message = "\(context): field '\(name)' is not \(expected)"
    return ChatError(.internalError, message, underlying: MongoStoreError(code: .badDocument, message: message))
}
