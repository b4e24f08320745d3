import Foundation
import Logging

extension ChatService {
    /// `message:read`: the user of `connection` has read every message of `chat` up to and including `messageID`.
    ///
    /// A mark that moves forward is stored and told to every connection of the chat's other participants (on any
    /// node) as `message:read`; a mark at or behind the user's current one changes nothing and returns the current.
    /// - Throws: ``ChatError`` `unauthorized` (the connection is not registered), `chat_not_found`,
    ///   `not_a_participant`, `message_not_found` (no such message in that chat), `store_unavailable` or
    ///   `internal_error`.
    public func markRead(_ chat: ChatID, upTo messageID: MessageID, from connection: ConnectionID) async throws(ChatError) -> ReadMark {
        guard let user = self.connectionUsers[connection] else {
            throw ChatError(.unauthorized, "this connection is not authenticated; reconnect with a valid token")
        }
        return try await self.markRead(chat, upTo: messageID, by: user.id)
    }

    /// Moves `user`'s read mark in `chat` forward to `messageID` (``markRead(_:upTo:from:)`` for a caller without a
    /// connection, such as the HTTP API).
    /// - Throws: as ``markRead(_:upTo:from:)``.
    public func markRead(_ chat: ChatID, upTo messageID: MessageID, by user: UserID) async throws(ChatError) -> ReadMark {
        guard chat.rawValue.utf8.count <= Chat.maxIDBytes else {
            throw ChatError(.chatNotFound, "no chat \(LogSafe.quoted(chat.rawValue))")
        }
        let found = try await self.participantChat(chat, caller: user)
        guard let message = try await self.storeCall({ try await self.store.message(messageID) }), message.chatID == chat else {
            throw ChatError(.messageNotFound, "no message \(messageID.hexString) in chat \(LogSafe.quoted(chat.rawValue))")
        }
        let requested = ReadMark(chatID: chat, userID: user, messageID: message.id, readAt: self.wallClock.now())
        let outcome = try await self.storeCall { try await self.store.markRead(requested) }
        guard case .advanced(let mark) = outcome else { return outcome.mark }
        self.statistics.readMarks += 1
        self.receiptEvents?.record([ReceiptEvent(id: self.idGenerator.next(), kind: .read, messageID: mark.messageID, chatID: chat, userID: user, at: mark.readAt)])
        await self.tell(.messageRead(mark), ChatNotice(read: mark, recipients: []), in: found, about: user)
        return mark
    }

    /// Each of `chats` with `user`'s unread count and every participant's read mark (`GET /api/chats`).
    /// - Throws: ``ChatError`` `store_unavailable` or `internal_error`.
    public func readState(of chats: [ChatID], for user: UserID) async throws(ChatError) -> [ChatID: ChatReadState] {
        guard !chats.isEmpty else { return [:] }
        return try await self.storeCall { try await self.store.readState(of: chats, for: user) }
    }

    // MARK: Typing

    /// `typing:start` (`typing` true) or `typing:stop` from `connection` in `chat`: the other participants'
    /// connections get `typing`. A start holds for ``ChatServiceConfiguration/typingTTL`` unless refreshed; then,
    /// or when the user's last connection closes, they get `typing: false`. Nothing is stored or queued.
    ///
    /// Limited per connection by ``ChatServiceConfiguration/typingRateLimit``: the first event over the limit is
    /// refused with `bad_request`; the ones after it are dropped silently until the limit allows one again.
    /// - Returns: nil when the event was taken or dropped; the error to tell the client otherwise.
    public func typing(_ chat: ChatID, typing: Bool, from connection: ConnectionID) async -> ChatError? {
        guard let user = self.connectionUsers[connection] else {
            return ChatError(.unauthorized, "this connection is not authenticated; reconnect with a valid token")
        }
        let now = self.wallClock.now().timeIntervalSince1970
        if self.typingLimiter.take(connection, now: now) != nil {
            guard self.typingFloods.insert(connection).inserted else { return nil }
            self.logger.info("Typing events refused: too many", metadata: ["chat.connection.id": "\(connection)", "chat.user.id": "\(LogSafe.value(user.id.rawValue))"])
            return ChatError(.badRequest, "too many typing events; send typing:start at most every few seconds while typing")
        }
        self.typingFloods.remove(connection)
        guard chat.rawValue.utf8.count <= Chat.maxIDBytes else {
            return ChatError(.chatNotFound, "no chat \(LogSafe.quoted(chat.rawValue))")
        }
        let found: Chat
        do {
            found = try await self.participantChat(chat, caller: user.id)
        } catch {
            return error
        }
        guard found.hasAccepted(user.id) else {
            return ChatError(.notAParticipant, "accept chat \(LogSafe.quoted(chat.rawValue)) before typing in it")
        }
        let key = TypingKey(chat: chat, user: user.id)
        if typing {
            let wasTyping = self.typingDeadlines.updateValue(self.clock.now() + self.configuration.typingTTL, forKey: key) != nil
            self.typingSweepSignal.yield()
            if !wasTyping { await self.tellTyping(key, true, in: found) }
        } else if self.typingDeadlines.removeValue(forKey: key) != nil {
            await self.tellTyping(key, false, in: found)
        }
        return nil
    }

    /// Ends every typing indicator of `user` (their last connection here closed).
    func stopTyping(of user: UserID) async {
        let keys = self.typingDeadlines.keys.filter { $0.user == user }
        for key in keys {
            self.typingDeadlines[key] = nil
            await self.tellTyping(key, false, in: nil)
        }
    }

    /// Ends typing indicators not refreshed within the TTL, waking at the earliest deadline (on the engine's clock).
    func typingExpiryLoop() async {
        var signals = self.typingSweepSignals.makeAsyncIterator()
        while !Task.isCancelled {
            guard let next = self.typingDeadlines.values.min() else {
                // Nothing to expire: wait for the next start.
                guard await signals.next() != nil else { return }
                continue
            }
            do {
                try await self.clock.sleep(until: next)
            } catch {
                return
            }
            let now = self.clock.now()
            let expired = self.typingDeadlines.filter { $0.value <= now }.keys
            for key in expired.sorted(by: { ($0.chat, $0.user) < ($1.chat, $1.user) }) {
                self.typingDeadlines[key] = nil
                await self.tellTyping(key, false, in: nil)
            }
        }
    }

    private func tellTyping(_ key: TypingKey, _ typing: Bool, in chat: Chat?) async {
        var found = chat
        if found == nil {
            do {
                found = try await self.store.chat(key.chat)
                self.storeSucceeded()
            } catch {
                self.storeFailed(error)
            }
        }
        guard let found else { return }
        let change = TypingChange(chatID: key.chat, userID: key.user, typing: typing)
        await self.tell(.typing(change), ChatNotice(typing: change, recipients: []), in: found, about: key.user)
    }

    /// Sends `event` to every connection of `chat`'s other accepted participants that `user` has not blocked:
    /// here directly, on other nodes through the relay as `notice`.
    private func tell(_ event: OutboundEvent, _ notice: ChatNotice, in chat: Chat, about user: UserID) async {
        var peers = Set(chat.participants.filter { $0 != user && chat.hasAccepted($0) })
        do {
            peers.subtract(try await self.store.blockedUsers(of: user))
            self.storeSucceeded()
        } catch {
            // Unknown block list: say nothing rather than tell a blocked user.
            self.storeFailed(error)
            return
        }
        guard !peers.isEmpty else { return }
        let prepared = self.transport.prepare(event)
        for peer in peers {
            for connection in self.lanes[peer]?.connections ?? [] {
                try? self.transport.emit(prepared, to: connection, acknowledgement: nil)
            }
        }
        guard let relay = self.relay else { return }
        for (node, recipients) in await self.otherNodes(of: peers) {
            var notice = notice
            notice.recipients = recipients
            do {
                try await relay.notify(notice, to: node)
                self.relaySucceeded()
            } catch {
                self.relayFailed(error)
            }
        }
    }
}

/// One user typing in one chat.
struct TypingKey: Hashable, Sendable {
    var chat: ChatID
    var user: UserID
}
