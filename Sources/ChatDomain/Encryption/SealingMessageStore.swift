public import Foundation
public import Logging
import Synchronization

/// Which chats' messages are sealed at rest.
public enum EncryptionScope: String, Sendable, Hashable {
    /// Every chat's.
    case all
    /// Only chats created with `"encrypted": true`.
    case flagged
}

/// A ``MessageStore`` that seals what it hands to `base` and opens what it reads back: content never reaches the
/// store in the clear (in every chat, or in flagged chats only), while the engine above works on plaintext.
///
/// A stored message that cannot be opened (its key is not configured, or it was tampered with) is never handed on
/// as if it were content: catch-up and history pages leave it out and log it (it stays pending, and is delivered
/// once the key is back); ``message(_:)`` throws `message_unreadable`.
public final class SealingMessageStore: MessageStore {
    /// The store underneath.
    public let base: any MessageStore
    let sealing: MessageSealing
    let scope: EncryptionScope
    let logger: Logger
    /// Whether each chat seen is flagged (``EncryptionScope/flagged``); a chat's flag never changes once created.
    private let flags = Mutex<[ChatID: Bool]>([:])
    /// The sealed copies made last, shared with the sealing queue and relay over this store.
    let sealedCopies = SealedCopies()
    private static let maxCachedFlags = 100_000

    /// Seals for `scope` with `sealer` over `base`.
    public init(base: any MessageStore, sealer: any MessageSealer, scope: EncryptionScope, logger: Logger) {
        self.base = base
        self.sealing = MessageSealing(sealer: sealer)
        self.scope = scope
        self.logger = logger
    }

    /// Whether messages of `chat` are sealed.
    func seals(_ chat: ChatID) async throws -> Bool {
        if self.scope == .all { return true }
        if let flag = self.flags.withLock({ $0[chat] }) { return flag }
        let flag = try await self.base.chat(chat)?.encrypted ?? false
        self.remember(chat, flag)
        return flag
    }

    private func remember(_ chat: ChatID, _ flag: Bool) {
        self.flags.withLock { flags in
            if flags.count >= Self.maxCachedFlags { flags.removeAll(keepingCapacity: true) }
            flags[chat] = flag
        }
    }

    /// `message` sealed when its chat is; a sealing failure becomes `internal_error` (nothing is stored).
    func sealIfNeeded(_ message: Message) async throws -> Message {
        guard try await self.seals(message.chatID) else { return message }
        do {
            return try self.sealing.seal(message)
        } catch {
            throw ChatError(.internalError, "message \(message.id) could not be sealed: \(error.message)")
        }
    }

    /// `message` opened, or the error that says why it cannot be (logged).
    func open(_ message: Message) -> Result<Message, ChatError> {
        do {
            return .success(try self.sealing.open(message))
        } catch {
            self.logger.error(
                "Stored message cannot be opened; it is not delivered or shown until its key is configured",
                metadata: [
                    "chat.message.id": "\(message.id)", "chat.id": "\(LogSafe.value(message.chatID.rawValue))",
                    "encryption.key_id": "\(LogSafe.value(MessageSealing.keyID(of: message) ?? "-"))", "encryption.error": "\(error.code.rawValue)",
                ]
            )
            let hint = error.code == .unknownKey ? "add its key to ENCRYPTION_OLD_KEYS" : "it was changed after it was stored"
            return .failure(ChatError(.messageUnreadable, "\(error.message); \(hint)"))
        }
    }

    /// A page read through `fetch(afterRaw, limit)` with the messages that cannot be opened left out and the page
    /// filled up again from further on, so a full page still means there may be more.
    private func openedPage(limit: Int, _ fetch: (Message?, Int) async throws -> [Message]) async throws -> [Message] {
        var result: [Message] = []
        var last: Message?
        while true {
            let wanted = limit - result.count
            let page = try await fetch(last, wanted)
            for message in page {
                if case .success(let opened) = self.open(message) { result.append(opened) }
            }
            // A short page is the end; a full one with messages left out may have more behind it.
            guard page.count == wanted, result.count < limit, let tail = page.last else { break }
            last = tail
        }
        return result
    }

    public func insert(_ message: Message, pendingFor recipients: [UserID]) async throws -> InsertOutcome {
        switch try await self.base.insert(try await self.sealedCopies.sealed(message, by: self), pendingFor: recipients) {
        case .inserted:
            return .inserted
        case .duplicate(let first):
            return .duplicate(try self.open(first).get())
        }
    }

    public func markDelivered(_ marks: [DeliveryMark]) async throws {
        try await self.base.markDelivered(marks)
    }

    public func recordOutcome(_ status: DeliveryStatus, messageID: MessageID, userID: UserID, at date: Date) async throws {
        try await self.base.recordOutcome(status, messageID: messageID, userID: userID, at: date)
    }

    public func pendingMessages(for user: UserID, createdSince: Date, afterID: MessageID?, limit: Int) async throws -> [Message] {
        try await self.openedPage(limit: limit) { last, count in
            try await self.base.pendingMessages(for: user, createdSince: createdSince, afterID: last?.id ?? afterID, limit: count)
        }
    }

    public func history(of chat: ChatID, before: MessageID?, limit: Int) async throws -> [Message] {
        try await self.openedPage(limit: limit) { last, count in
            try await self.base.history(of: chat, before: last?.id ?? before, limit: count)
        }
    }

    public func receipts(for messageID: MessageID) async throws -> [DeliveryReceipt] {
        try await self.base.receipts(for: messageID)
    }

    public func markRead(_ mark: ReadMark) async throws -> ReadMarkOutcome {
        try await self.base.markRead(mark)
    }

    public func readState(of chats: [ChatID], for user: UserID) async throws -> [ChatID: ChatReadState] {
        try await self.base.readState(of: chats, for: user)
    }

    public func message(_ id: MessageID) async throws -> Message? {
        guard let stored = try await self.base.message(id) else { return nil }
        return try self.open(stored).get()
    }

    public func chat(_ id: ChatID) async throws -> Chat? {
        let chat = try await self.base.chat(id)
        if let chat { self.remember(chat.id, chat.encrypted) }
        return chat
    }

    public func chats(of user: UserID) async throws -> [Chat] {
        try await self.base.chats(of: user)
    }

    public func saveChat(_ chat: Chat) async throws {
        try await self.base.saveChat(chat)
        self.remember(chat.id, chat.encrypted)
    }

    public func users(_ ids: [UserID]) async throws -> [UserID: User] {
        try await self.base.users(ids)
    }

    public func saveUser(_ user: User) async throws {
        try await self.base.saveUser(user)
    }

    public func usersBlocking(_ sender: UserID, among users: [UserID]) async throws -> Set<UserID> {
        try await self.base.usersBlocking(sender, among: users)
    }

    public func blockedUsers(of user: UserID) async throws -> Set<UserID> {
        try await self.base.blockedUsers(of: user)
    }

    public func setBlocked(_ other: UserID, by user: UserID, blocked: Bool) async throws {
        try await self.base.setBlocked(other, by: user, blocked: blocked)
    }
}
