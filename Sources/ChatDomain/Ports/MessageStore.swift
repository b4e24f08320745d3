public import Foundation

/// The source of truth: messages, chats and users. A message exists once ``insert(_:pendingFor:)`` returned.
///
/// Implementations throw ``ChatError`` with code ``ChatError/Code/unavailable`` when the store cannot be reached,
/// within a bounded time.
public protocol MessageStore: Sendable {
    /// Stores `message` together with the recipients it is still pending for, and sets it as its chat's
    /// `lastMessage`, in one write.
    ///
    /// If the sender already stored a message with the same `clientMessageID` in the same chat, nothing is written
    /// and the outcome is ``InsertOutcome/duplicate(_:)`` with the first message. The key is sender, chat and
    /// client id: the same client id in another chat is another message.
    func insert(_ message: Message, pendingFor recipients: [UserID]) async throws -> InsertOutcome

    /// Records confirmed deliveries: each recipient still pending for the message is added to its `readBy` and
    /// cleared from its pending recipients in one atomic step, so `readBy` holds a user once whatever the number
    /// of marks. One round trip for the whole batch where possible.
    func markDelivered(_ marks: [DeliveryMark]) async throws

    /// Records a final outcome other than delivery (``DeliveryStatus/expired`` or ``DeliveryStatus/failed``)
    /// for a recipient the message is still pending for, and clears them from its pending recipients.
    func recordOutcome(_ status: DeliveryStatus, messageID: MessageID, userID: UserID, at date: Date) async throws

    /// Messages still pending for `user`, created at or after `createdSince`, with ids greater than `afterID`,
    /// oldest first, at most `limit`.
    func pendingMessages(for user: UserID, createdSince: Date, afterID: MessageID?, limit: Int) async throws
        -> [Message]

    /// A page of a chat's history, newest first: messages with ids below `before` (from the newest when nil), at
    /// most `limit`.
    func history(of chat: ChatID, before: MessageID?, limit: Int) async throws -> [Message]

    /// Per-recipient delivery status of a message (the delivery receipts API).
    func receipts(for messageID: MessageID) async throws -> [DeliveryReceipt]

    /// Moves `mark.userID`'s read mark in `mark.chatID` forward to `mark.messageID`: each message of the chat up to
    /// it that no earlier mark covered is read at `mark.readAt` (``receipts(for:)`` shows it). A mark already at or
    /// past `mark.messageID` stays as it is. Concurrent calls for one reader keep the newest mark.
    func markRead(_ mark: ReadMark) async throws -> ReadMarkOutcome

    /// For each of `chats`: how many messages from others `user`'s read mark does not cover, and
    /// every participant's mark.
    func readState(of chats: [ChatID], for user: UserID) async throws -> [ChatID: ChatReadState]

    /// The message with `id`, if stored.
    func message(_ id: MessageID) async throws -> Message?

    /// The chat with `id`, if it exists.
    func chat(_ id: ChatID) async throws -> Chat?

    /// The chats `user` takes part in.
    func chats(of user: UserID) async throws -> [Chat]

    /// Creates or replaces `chat`.
    func saveChat(_ chat: Chat) async throws

    /// The users with these ids that are known; unknown ids are left out.
    func users(_ ids: [UserID]) async throws -> [UserID: User]

    /// Creates or updates `user` (for example from a token's claims).
    func saveUser(_ user: User) async throws

    /// The users among `users` who have blocked `sender` (their block lists name `sender`). One round trip.
    func usersBlocking(_ sender: UserID, among users: [UserID]) async throws -> Set<UserID>

    /// The users `user` has blocked.
    func blockedUsers(of user: UserID) async throws -> Set<UserID>

    /// Adds `other` to `user`'s block list (`blocked` true) or removes it; idempotent.
    func setBlocked(_ other: UserID, by user: UserID, blocked: Bool) async throws
}

/// What ``MessageStore/markRead(_:)`` did.
public enum ReadMarkOutcome: Sendable, Hashable {
    /// The reader's mark moved forward to this one.
    case advanced(ReadMark)
    /// The reader's mark was already at or past the given message; this is the mark in force.
    case unchanged(ReadMark)

    /// The mark in force after the call.
    public var mark: ReadMark {
        switch self {
        case .advanced(let mark), .unchanged(let mark): mark
        }
    }
}

/// What ``MessageStore/insert(_:pendingFor:)`` did.
public enum InsertOutcome: Sendable, Hashable {
    /// The message was stored.
    case inserted
    /// The sender had already stored a message with this `clientMessageID` in this chat; this is that message.
    case duplicate(Message)
}
