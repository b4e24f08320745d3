/// Decides whether a `message:send` may be accepted; pure, so every rule is tested without a store.
struct MessageValidator {
    var maxContentBytes: Int
    var allowedMessageTypes: Set<MessageType>
    /// Whether content is sealed at rest: then content may not look like a sealed value (it would be taken for one
    /// when read back, and hidden).
    var reservesSealedPrefix = false

    /// Returns the message type to store, or throws the error the client gets.
    func validate(_ request: SendMessageRequest, chat: Chat?, sender: UserID) throws(ChatError) -> MessageType {
        guard let chat else {
            throw ChatError(.chatNotFound, "chat \(LogSafe.quoted(request.chatID.rawValue)) does not exist")
        }
        guard chat.hasParticipant(sender) else {
            throw ChatError(.notAParticipant, "you are not a participant of chat \(LogSafe.quoted(chat.id.rawValue))")
        }
        guard !chat.invited.contains(sender) else {
            throw ChatError(.notAParticipant, "you were invited to chat \(LogSafe.quoted(chat.id.rawValue)); accept it first (POST /api/chats/{id}/accept)")
        }
        if request.content.allSatisfy(\.isWhitespace) {
            throw ChatError(.emptyContent, "content must contain at least one non-space character")
        }
        if self.reservesSealedPrefix, request.content.hasPrefix(MessageSealing.prefix) {
            throw ChatError(.badRequest, "content may not start with \"\(MessageSealing.prefix)\" on this server (it marks encrypted content)")
        }
        let bytes = request.content.utf8.count
        if bytes > self.maxContentBytes {
            throw ChatError(
                .contentTooLarge,
                "content is \(bytes) UTF-8 bytes; the limit is \(self.maxContentBytes)"
            )
        }
        let type = request.messageType ?? .text
        guard self.allowedMessageTypes.contains(type) else {
            let allowed = self.allowedMessageTypes.map(\.rawValue).sorted().joined(separator: ", ")
            throw ChatError(.invalidMessageType, "messageType \(LogSafe.quoted(type.rawValue)) is not one of: \(allowed)")
        }
        if let clientMessageID = request.clientMessageID, clientMessageID.isEmpty || clientMessageID.utf8.count > 128 {
            throw ChatError(.badRequest, "clientMessageId must be 1 to 128 bytes")
        }
        return type
    }
}
