/// Carries live messages between chatd nodes that share one presence store: the sender's node forwards a message to
/// each node that holds a connection of a recipient, and that node delivers it as if it had been sent there. It
/// also carries presence changes to the nodes where a user's contacts are connected.
///
/// Each node reads only its own inbox. The store stays the final net: a forwarded message stays pending for its
/// recipient until a client confirms it, so an inbox lost with a node delays it to the recipient's next catch-up,
/// never loses it.
///
/// Implementations throw ``ChatError`` with code ``ChatError/Code/unavailable`` when the relay cannot be reached.
public protocol NodeRelay: Sendable {
    /// Hands `entries` (all for one recipient, in acceptance order) to `node`'s inbox and returns once the inbox
    /// holds them; returns the indexes of entries no inbox took (no such node: it never ran, or its inbox was
    /// removed after it died), which the caller routes to the offline path instead.
    func forward(_ entries: [QueueEntry], to node: NodeID) async throws -> Set<Int>

    /// Tells `node` about a presence change, for the connections there of `notice.recipients`. Best effort: a
    /// node without an inbox is skipped.
    func announce(_ notice: PresenceNotice, to node: NodeID) async throws

    /// Tells `node` about a chat event (a read mark, typing), for the connections there of `notice.recipients`.
    /// Best effort, like ``announce(_:to:)``.
    func notify(_ notice: ChatNotice, to node: NodeID) async throws

    /// Reads `node`'s inbox until the task is cancelled, handing each batch to `deliver` in order; a batch is
    /// removed from the inbox once `deliver` returned, so one taken before a crash comes back to the next reader.
    func receive(for node: NodeID, deliver: @escaping @Sendable ([RelayMessage]) async -> Void) async throws

    /// Takes over the inbox of `node`, which died: hands what is left in it to `deliver`, batch after batch,
    /// removes each batch once `deliver` returned, then deletes the inbox so that later forwards to `node` are
    /// refused. An inbox that is still read (the node came back) or that received more meanwhile is left alone
    /// and reported as not removed, for the next attempt; a node that never had an inbox counts as removed.
    func takeOver(inboxOf node: NodeID, deliver: @escaping @Sendable ([RelayMessage]) async -> Void) async throws -> InboxTakeover
}

/// What taking over a dead node's inbox did.
public struct InboxTakeover: Sendable, Hashable {
    /// How many messages were handed on.
    public var moved: Int
    /// Whether the inbox is gone; false when it is still read or still receiving (try again later).
    public var removed: Bool

    /// Creates a report.
    public init(moved: Int, removed: Bool) {
        self.moved = moved
        self.removed = removed
    }
}

/// What one node's inbox holds.
public enum RelayMessage: Sendable, Hashable {
    /// A message for a recipient connected to the receiving node.
    case entry(QueueEntry)
    /// A user came online or went offline: tell their contacts' connections on the receiving node.
    case presence(PresenceNotice)
    /// A read mark or a typing change: tell the recipients' connections on the receiving node.
    case notice(ChatNotice)
}

/// A read mark or a typing change for some users' connections on one node.
public struct ChatNotice: Sendable, Hashable, Codable {
    /// The other participants' read mark moved forward (`message:read`), if this notice carries one.
    public var read: ReadMark?
    /// A participant started or stopped typing (`typing`), if this notice carries that.
    public var typing: TypingChange?
    /// The users to tell.
    public var recipients: [UserID]

    /// A notice of a read mark.
    public init(read: ReadMark, recipients: [UserID]) {
        self.read = read
        self.recipients = recipients
    }

    /// A notice of a typing change.
    public init(typing: TypingChange, recipients: [UserID]) {
        self.typing = typing
        self.recipients = recipients
    }

    /// The event the recipients' connections get; nil for a notice from a newer chatd that carries neither.
    public var event: OutboundEvent? {
        if let read { return .messageRead(read) }
        if let typing { return .typing(typing) }
        return nil
    }
}

/// A presence change for some users' connections on one node.
public struct PresenceNotice: Sendable, Hashable, Codable {
    /// Who came online or went offline, and when.
    public var change: PresenceChange
    /// Whether they came online (`user:online`) or went offline (`user:offline`).
    public var online: Bool
    /// The contacts to tell.
    public var recipients: [UserID]

    /// Creates a notice.
    public init(change: PresenceChange, online: Bool, recipients: [UserID]) {
        self.change = change
        self.online = online
        self.recipients = recipients
    }
}
