import Foundation
import Logging

/// A message and its delivery state per recipient.
public struct MessageReceipts: Sendable {
    /// The message.
    public var message: Message
    /// One entry per recipient.
    public var receipts: [DeliveryReceipt]
}

extension ChatService {
    /// Creates a chat of `creator` and `participants` (the creator is added; duplicates and surrounding spaces are
    /// dropped). Users named for the first time exist from now on. With
    /// ``ChatServiceConfiguration/requireChatAcceptance`` everyone but the creator starts out invited. `encrypted`
    /// asks for the chat's messages to be sealed at rest (needs ``ChatServiceConfiguration/encryption``; with
    /// ``EncryptionScope/all`` every chat is).
    /// - Throws: ``ChatError`` `bad_request` (a participant id that is empty, over 256 bytes or holds control
    ///   characters; nobody besides the creator; more than ``ChatServiceConfiguration/maxChatParticipants``; a
    ///   name over 256 bytes; `encrypted` on a server without encryption), `too_many_chats` (the creator is in
    ///   ``ChatServiceConfiguration/maxChatsPerUser`` chats already), `store_unavailable` or `internal_error`.
    public func createChat(by creator: User, participants names: [String], name: String?, encrypted: Bool = false) async throws(ChatError) -> Chat {
        if encrypted, self.configuration.encryption == nil {
            throw ChatError(.badRequest, "this server does not encrypt messages at rest (no ENCRYPTION_KEY); create the chat without \"encrypted\"")
        }
        var participants: [UserID] = [creator.id]
        for raw in names {
            let id = raw.trimmingCharacters(in: .whitespaces)
            guard !id.isEmpty, id.utf8.count <= 256, !id.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw ChatError(.badRequest, "each participant must be a user id of 1 to 256 characters, without control characters")
            }
            if !participants.contains(UserID(id)) { participants.append(UserID(id)) }
        }
        guard participants.count >= 2 else {
            throw ChatError(.badRequest, "a chat needs at least one participant besides you")
        }
        guard participants.count <= self.configuration.maxChatParticipants else {
            throw ChatError(.badRequest, "a chat has at most \(self.configuration.maxChatParticipants) participants")
        }
        if let name, name.utf8.count > 256 {
            throw ChatError(.badRequest, "name must be at most 256 characters")
        }
        let existing = try await self.storeCall { try await self.store.chats(of: creator.id) }
        guard existing.count < self.configuration.maxChatsPerUser else {
            throw ChatError(.tooManyChats, "you are in \(existing.count) chats, the most this server allows; leave one first")
        }
        let chat = Chat(
            id: ChatID(self.idGenerator.next().hexString),
            participants: participants,
            name: name,
            invited: self.configuration.requireChatAcceptance ? participants.filter { $0 != creator.id } : [],
            encrypted: encrypted || self.configuration.encryption == .all
        )
        let store = self.store
        try await self.storeCall {
            // A user exists from the first time an id is used.
            let known = try await store.users(participants)
            for id in participants where known[id] == nil {
                try await store.saveUser(id == creator.id ? creator : User(id: id, username: id.rawValue))
            }
            try await store.saveChat(chat)
        }
        self.transport.chatMembershipChanged(chat.id, joined: participants, left: [])
        self.logger.info(
            "Chat created",
            metadata: ["chat.id": "\(chat.id)", "chat.user.id": "\(creator.id)", "chat.participants": "\(participants.count)"]
        )
        return chat
    }

    /// A page of `chat`'s messages for `caller`, newest first, older than `before` when given.
    /// - Throws: ``ChatError`` `chat_not_found`, `not_a_participant`, `store_unavailable` or `internal_error`.
    public func history(of chat: ChatID, for caller: UserID, before: MessageID?, limit: Int) async throws(ChatError) -> [Message] {
        let chat = try await self.participantChat(chat, caller: caller)
        return try await self.storeCall { try await self.store.history(of: chat.id, before: before, limit: limit) }
    }

    /// The delivery state of `message` per recipient, for a participant of its chat.
    /// - Throws: ``ChatError`` `message_not_found`, `not_a_participant`, `store_unavailable` or `internal_error`.
    public func receipts(of message: MessageID, for caller: UserID) async throws(ChatError) -> MessageReceipts {
        guard let found = try await self.storeCall({ try await self.store.message(message) }) else {
            throw ChatError(.messageNotFound, "no message \(message.hexString)")
        }
        _ = try await self.participantChat(found.chatID, caller: caller)
        let receipts = try await self.storeCall { try await self.store.receipts(for: message) }
        return MessageReceipts(message: found, receipts: receipts)
    }

    /// `user` leaves `chat`: they get none of its messages and share no presence through it any more; the chat
    /// goes on for the others.
    /// - Throws: ``ChatError`` `chat_not_found`, `not_a_participant`, `store_unavailable` or `internal_error`.
    public func leave(_ chat: ChatID, user: UserID) async throws(ChatError) -> Chat {
        var updated = try await self.participantChat(chat, caller: user)
        updated.participants.removeAll { $0 == user }
        updated.invited.removeAll { $0 == user }
        let saved = updated
        try await self.storeCall { try await self.store.saveChat(saved) }
        self.transport.chatMembershipChanged(chat, joined: [], left: [user])
        self.logger.info("Chat left", metadata: ["chat.id": "\(chat)", "chat.user.id": "\(LogSafe.value(user.rawValue))"])
        return saved
    }

    /// `user` accepts a chat they were invited to: from now on it delivers to them and shares their presence.
    /// - Throws: ``ChatError`` `chat_not_found`, `not_a_participant`, `store_unavailable` or `internal_error`.
    public func accept(_ chat: ChatID, user: UserID) async throws(ChatError) -> Chat {
        var updated = try await self.participantChat(chat, caller: user)
        updated.invited.removeAll { $0 == user }
        let saved = updated
        try await self.storeCall { try await self.store.saveChat(saved) }
        return saved
    }

    /// The users `user` blocked.
    /// - Throws: ``ChatError`` `store_unavailable` or `internal_error`.
    public func blockedUsers(of user: UserID) async throws(ChatError) -> Set<UserID> {
        try await self.storeCall { try await self.store.blockedUsers(of: user) }
    }

    /// Blocks or unblocks `other` for `user`: a blocked user's messages to `user` are refused (`blocked`) or, in a
    /// group, not delivered to `user`, and the blocked user no longer sees `user`'s presence.
    /// - Throws: ``ChatError`` `bad_request` (`other` is empty, over 256 bytes or `user` themself),
    ///   `store_unavailable` or `internal_error`.
    public func setBlocked(_ other: UserID, by user: UserID, blocked: Bool) async throws(ChatError) {
        guard !other.rawValue.isEmpty, other.rawValue.utf8.count <= 256, other != user else {
            throw ChatError(.badRequest, "name another user's id (1 to 256 characters)")
        }
        try await self.storeCall { try await self.store.setBlocked(other, by: user, blocked: blocked) }
        self.logger.info(
            blocked ? "User blocked" : "User unblocked",
            metadata: ["chat.user.id": "\(LogSafe.value(user.rawValue))", "chat.blocked_user.id": "\(LogSafe.value(other.rawValue))"]
        )
    }

    func participantChat(_ id: ChatID, caller: UserID) async throws(ChatError) -> Chat {
        guard let chat = try await self.storeCall({ try await self.store.chat(id) }) else {
            throw ChatError(.chatNotFound, "no chat \(LogSafe.quoted(id.rawValue))")
        }
        guard chat.hasParticipant(caller) else {
            throw ChatError(.notAParticipant, "you are not a participant of chat \(LogSafe.quoted(id.rawValue))")
        }
        return chat
    }

    /// Runs a store call; its failure becomes `store_unavailable` (an outage, tracked for health) or
    /// `internal_error` (the store refused it).
    func storeCall<T: Sendable>(_ body: () async throws -> T) async throws(ChatError) -> T {
        do {
            let result = try await body()
            self.storeSucceeded()
            return result
        } catch {
            self.storeFailed(error)
            throw Self.storeError(error)
        }
    }
}
