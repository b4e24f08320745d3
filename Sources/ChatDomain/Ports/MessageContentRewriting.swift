/// What `chatd reencrypt` needs from a store: every stored message, as stored, in id order, and a way to replace one
/// message's content and attachments (nothing else of it changes).
public protocol MessageContentRewriting: Sendable {
    /// Stored messages with ids greater than `after` (from the first when nil), oldest first, at most `limit`.
    func storedMessages(after: MessageID?, limit: Int) async throws -> [Message]

    /// Writes `message`'s content and attachments over the stored message with its id.
    func replaceContent(of message: Message) async throws
}
