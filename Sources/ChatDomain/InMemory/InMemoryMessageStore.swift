public import Foundation
import Synchronization

/// A ``MessageStore`` in process memory: `chatd`'s embedded default and the store to test delivery logic
/// against. Everything is lost when the process exits, and nothing is ever evicted.
///
/// ``setAvailable(_:)`` simulates an outage: while unavailable every call throws ``ChatError/Code/unavailable``.
/// ``hold(_:)`` simulates a store that takes its time: inserts, or chat lookups, wait until ``release(_:)``.
public final class InMemoryMessageStore: MessageStore {
    private struct StoredMessage {
        var message: Message
        var pendingFor: Set<UserID>
        var outcomes: [UserID: DeliveryReceipt]
        /// When each reader's mark first covered the message.
        var readAt: [UserID: Date] = [:]
    }

    private struct State {
        var available = true
        var messages: [MessageID: StoredMessage] = [:]
        /// Per user, the ids of messages pending for them, sorted.
        var pending: [UserID: [MessageID]] = [:]
        var clientIDs: [String: MessageID] = [:]
        /// Per chat, its messages' ids, sorted.
        var chatMessages: [ChatID: [MessageID]] = [:]
        /// Per chat, each reader's mark.
        var readMarks: [ChatID: [UserID: ReadMark]] = [:]
        var chats: [ChatID: Chat] = [:]
        var users: [UserID: User] = [:]
        /// Per user, the users they blocked.
        var blocks: [UserID: Set<UserID>] = [:]
        var deliveryWrites = 0
        /// Per held kind of call, the calls waiting for ``release(_:)``.
        var held: [HeldCall: [CheckedContinuation<Void, Never>]] = [:]
    }

    private let state = Mutex(State())

    /// Creates an empty store.
    public init() {}

    /// Turns the simulated outage off (`true`) or on (`false`).
    public func setAvailable(_ available: Bool) {
        self.state.withLock { $0.available = available }
    }

    /// The recipients `messageID` is still pending for (a test and monitoring aid).
    public func pendingRecipients(of messageID: MessageID) -> Set<UserID> {
        self.state.withLock { $0.messages[messageID]?.pendingFor ?? [] }
    }

    /// How many ``markDelivered(_:)`` writes were made (each is one round trip in a networked store).
    public var deliveryWriteCount: Int {
        self.state.withLock { $0.deliveryWrites }
    }

    /// How many messages are stored.
    public var messageCount: Int {
        self.state.withLock { $0.messages.count }
    }

    /// The calls ``hold(_:)`` can make wait.
    public enum HeldCall: Hashable, Sendable {
        /// ``insert(_:pendingFor:)``.
        case inserts
        /// ``chat(_:)``.
        case chatLookups
    }

    /// Makes `calls` wait, from now until ``release(_:)``.
    public func hold(_ calls: HeldCall) {
        self.state.withLock { state in
            if state.held[calls] == nil { state.held[calls] = [] }
        }
    }

    /// Lets the `calls` that wait go on, and later ones pass at once.
    public func release(_ calls: HeldCall) {
        let waiting = self.state.withLock { state in
            state.held.removeValue(forKey: calls) ?? []
        }
        for call in waiting { call.resume() }
    }

    /// How many `calls` wait for ``release(_:)``.
    public func heldCount(_ calls: HeldCall) -> Int {
        self.state.withLock { $0.held[calls]?.count ?? 0 }
    }

    /// Returns at once, unless `calls` are held: then once they are released.
    private func pass(_ calls: HeldCall) async {
        guard self.state.withLock({ !$0.held.isEmpty }) else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let pass = self.state.withLock { state -> Bool in
                guard state.held[calls] != nil else { return true }
                state.held[calls]!.append(continuation)
                return false
            }
            if pass { continuation.resume() }
        }
    }

    public func insert(_ message: Message, pendingFor recipients: [UserID]) async throws -> InsertOutcome {
        await self.pass(.inserts)
        return try self.withAvailableState { state in
            // Idempotency is per sender and chat: the same client id in another chat is another message.
            let clientKey = message.clientMessageID.map { "\(message.senderID.rawValue)\u{0}\(message.chatID.rawValue)\u{0}\($0)" }
            if let clientKey, let firstID = state.clientIDs[clientKey], let first = state.messages[firstID] {
                return .duplicate(first.message)
            }
            state.messages[message.id] = StoredMessage(message: message, pendingFor: Set(recipients), outcomes: [:])
            for recipient in Set(recipients) {
                state.pending[recipient, default: []].insertSorted(message.id)
            }
            if let clientKey { state.clientIDs[clientKey] = message.id }
            state.chatMessages[message.chatID, default: []].insertSorted(message.id)
            state.chats[message.chatID]?.lastMessage = message.id
            return .inserted
        }
    }

    public func markDelivered(_ marks: [DeliveryMark]) async throws {
        try self.withAvailableState { state in
            state.deliveryWrites += 1
            for mark in marks {
                // As in the MongoDB store: only a recipient still pending joins readBy, in the same step that
                // clears them, so readBy never holds a user twice.
                guard state.messages[mark.messageID]?.pendingFor.contains(mark.userID) == true else { continue }
                state.messages[mark.messageID]?.message.markRead(by: mark.userID, at: mark.at)
                Self.clearPending(&state, messageID: mark.messageID, userID: mark.userID)
            }
        }
    }

    public func recordOutcome(_ status: DeliveryStatus, messageID: MessageID, userID: UserID, at date: Date) async throws {
        try self.withAvailableState { state in
            // Only while still pending: a delivery that was confirmed stays delivered whatever the queue says later.
            guard state.messages[messageID]?.pendingFor.contains(userID) == true else { return }
            state.messages[messageID]?.outcomes[userID] = DeliveryReceipt(userID: userID, status: status, at: date)
            Self.clearPending(&state, messageID: messageID, userID: userID)
        }
    }

    public func pendingMessages(for user: UserID, createdSince: Date, afterID: MessageID?, limit: Int) async throws
        -> [Message]
    {
        try self.withAvailableState { state in
            let ids = state.pending[user] ?? []
            let start = afterID.map { ids.firstIndex(after: $0) } ?? 0
            var result: [Message] = []
            for id in ids[start...] where result.count < limit {
                if let message = state.messages[id]?.message, message.createdAt >= createdSince {
                    result.append(message)
                }
            }
            return result
        }
    }

    public func history(of chat: ChatID, before: MessageID?, limit: Int) async throws -> [Message] {
        try self.withAvailableState { state in
            let messages = state.messages.values.lazy.map(\.message).filter { message in
                message.chatID == chat && before.map { message.id < $0 } ?? true
            }
            return Array(messages.sorted { $0.id > $1.id }.prefix(max(limit, 0)))
        }
    }

    public func receipts(for messageID: MessageID) async throws -> [DeliveryReceipt] {
        try self.withAvailableState { state in
            guard let stored = state.messages[messageID] else { return [] }
            // Without the chat, everyone the message names is a recipient.
            let recipients = state.chats[stored.message.chatID]?.participants
                ?? Array(stored.pendingFor) + stored.message.readBy.map(\.userID) + Array(stored.outcomes.keys)
            return DeliveryReceipt.receipts(
                of: stored.message,
                recipients: recipients,
                outcomes: Array(stored.outcomes.values),
                readAt: stored.readAt
            )
        }
    }

    public func markRead(_ mark: ReadMark) async throws -> ReadMarkOutcome {
        try self.withAvailableState { state in
            let current = state.readMarks[mark.chatID]?[mark.userID]
            if let current, current.messageID >= mark.messageID { return .unchanged(current) }
            let ids = state.chatMessages[mark.chatID] ?? []
            let start = current.map { ids.firstIndex(after: $0.messageID) } ?? 0
            let end = ids.firstIndex(after: mark.messageID)
            for id in ids[start..<max(start, end)] where state.messages[id]?.readAt[mark.userID] == nil {
                state.messages[id]?.readAt[mark.userID] = mark.readAt
            }
            state.readMarks[mark.chatID, default: [:]][mark.userID] = mark
            return .advanced(mark)
        }
    }

    public func readState(of chats: [ChatID], for user: UserID) async throws -> [ChatID: ChatReadState] {
        try self.withAvailableState { state in
            var result: [ChatID: ChatReadState] = [:]
            for chat in chats {
                let marks = state.readMarks[chat] ?? [:]
                let ids = state.chatMessages[chat] ?? []
                let start = marks[user].map { ids.firstIndex(after: $0.messageID) } ?? 0
                let unread = ids[start...].count { state.messages[$0]?.message.senderID != user }
                result[chat] = ChatReadState(unreadCount: unread, readUpTo: marks.mapValues(\.messageID))
            }
            return result
        }
    }

    public func message(_ id: MessageID) async throws -> Message? {
        try self.withAvailableState { $0.messages[id]?.message }
    }

    public func chat(_ id: ChatID) async throws -> Chat? {
        await self.pass(.chatLookups)
        return try self.withAvailableState { $0.chats[id] }
    }

    public func chats(of user: UserID) async throws -> [Chat] {
        try self.withAvailableState { state in
            state.chats.values.filter { $0.hasParticipant(user) }.sorted { $0.id < $1.id }
        }
    }

    public func saveChat(_ chat: Chat) async throws {
        try self.withAvailableState { $0.chats[chat.id] = chat }
    }

    public func users(_ ids: [UserID]) async throws -> [UserID: User] {
        try self.withAvailableState { state in
            var found: [UserID: User] = [:]
            for id in ids { found[id] = state.users[id] }
            return found
        }
    }

    public func saveUser(_ user: User) async throws {
        try self.withAvailableState { $0.users[user.id] = user }
    }

    public func usersBlocking(_ sender: UserID, among users: [UserID]) async throws -> Set<UserID> {
        try self.withAvailableState { state in Set(users.filter { state.blocks[$0]?.contains(sender) == true }) }
    }

    public func blockedUsers(of user: UserID) async throws -> Set<UserID> {
        try self.withAvailableState { $0.blocks[user] ?? [] }
    }

    public func setBlocked(_ other: UserID, by user: UserID, blocked: Bool) async throws {
        try self.withAvailableState { state in
            if blocked {
                state.blocks[user, default: []].insert(other)
            } else {
                state.blocks[user]?.remove(other)
                if state.blocks[user]?.isEmpty == true { state.blocks[user] = nil }
            }
        }
    }

    /// Stored messages after `after`, in id order (``MessageContentRewriting``).
    public func storedMessages(after: MessageID?, limit: Int) async throws -> [Message] {
        try self.withAvailableState { state in
            let ids = state.messages.keys.filter { id in after.map { id > $0 } ?? true }.sorted()
            return ids.prefix(max(0, limit)).compactMap { state.messages[$0]?.message }
        }
    }

    /// Replaces a stored message's content and attachments (``MessageContentRewriting``).
    public func replaceContent(of message: Message) async throws {
        try self.withAvailableState { state in
            state.messages[message.id]?.message.content = message.content
            state.messages[message.id]?.message.attachments = message.attachments
        }
    }

    private func withAvailableState<Result>(_ body: (inout State) throws -> Result) throws -> Result {
        try self.state.withLock { state in
            guard state.available else {
                throw ChatError(.unavailable, "the in-memory store is switched to a simulated outage")
            }
            return try body(&state)
        }
    }

    private static func clearPending(_ state: inout State, messageID: MessageID, userID: UserID) {
        guard state.messages[messageID]?.pendingFor.remove(userID) != nil else { return }
        state.pending[userID]?.removeSorted(messageID)
        if state.pending[userID]?.isEmpty == true { state.pending[userID] = nil }
    }
}

extension Array where Element == MessageID {
    /// The index of the first id greater than `id`.
    fileprivate func firstIndex(after id: MessageID) -> Int {
        var low = 0
        var high = self.count
        while low < high {
            let mid = (low + high) / 2
            if self[mid] <= id { low = mid + 1 } else { high = mid }
        }
        return low
    }

    fileprivate mutating func insertSorted(_ id: MessageID) {
        let index = self.firstIndex(after: id)
        if index > 0, self[index - 1] == id { return }
        self.insert(id, at: index)
    }

    fileprivate mutating func removeSorted(_ id: MessageID) {
        let index = self.firstIndex(after: id) - 1
        if index >= 0, self[index] == id { self.remove(at: index) }
    }
}


extension InMemoryMessageStore: MessageContentRewriting {}
