/// The payload of `message:send`, as the client sent it.
public struct SendMessageRequest: Sendable, Hashable, Codable {
    /// The chat to post in.
    public var chatID: ChatID
    /// The text.
    public var content: String
    /// The kind of content; `text` when absent.
    public var messageType: MessageType?
    /// Attachment descriptions, carried as they came.
    public var attachments: [JSONValue]?
    /// The message this one answers.
    public var replyTo: MessageID?
    /// The client's own id for the message; a repeated send with the same id creates nothing new.
    public var clientMessageID: String?

    /// Creates a request.
    public init(
        chatID: ChatID,
        content: String,
        messageType: MessageType? = nil,
        attachments: [JSONValue]? = nil,
        replyTo: MessageID? = nil,
        clientMessageID: String? = nil
    ) {
        self.chatID = chatID
        self.content = content
        self.messageType = messageType
        self.attachments = attachments
        self.replyTo = replyTo
        self.clientMessageID = clientMessageID
    }

    enum CodingKeys: String, CodingKey {
        case chatID = "chatId"
        case content, messageType, attachments, replyTo
        case clientMessageID = "clientMessageId"
    }
}
