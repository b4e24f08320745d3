import Foundation
import Logging
import Synchronization

/// A ``MessageQueue`` that seals the messages of the entries it hands to `base` (for the chats its store seals) and
/// opens what comes back. Dead letters are passed on as they are: the engine reads only their ids.
///
/// An entry that cannot be opened (its key was retired while it waited) is replaced by the store's copy of the
/// message, which `chatd reencrypt` re-sealed under a current key; if that cannot be opened either, it is logged,
/// removed from the queue and not delivered (it stays pending in the store).
public final class SealingMessageQueue: MessageQueue {
    /// The queue underneath.
    public let base: any MessageQueue
    let store: SealingMessageStore

    /// Seals the entries for `base` as `store` seals messages.
    public init(base: any MessageQueue, store: SealingMessageStore) {
        self.base = base
        self.store = store
    }

    public func enqueue(_ entries: [QueueEntry], for user: UserID) async throws -> [MessageID] {
        try await self.base.enqueue(try await self.store.sealedCopies.seal(entries, with: self.store), for: user)
    }

    public func consumer(for user: UserID, prefetch: Int) async throws -> any QueueConsumer {
        OpeningConsumer(base: try await self.base.consumer(for: user, prefetch: prefetch), store: self.store)
    }

    public func depth(for user: UserID) async throws -> QueueDepth {
        try await self.base.depth(for: user)
    }

    public func deadLetters() -> AsyncStream<DeadLetter> {
        self.base.deadLetters()
    }

    public func publishDeliveryEvents(_ events: [DeliveryEvent]) async throws {
        try await self.base.publishDeliveryEvents(events)
    }
}

/// Opens each delivery of a consumer underneath.
struct OpeningConsumer: QueueConsumer {
    let base: any QueueConsumer
    let store: SealingMessageStore

    func next() async throws -> QueueDelivery? {
        while let delivery = try await self.base.next() {
            if let entry = await self.store.opened(delivery.entry) {
                return QueueDelivery(entry: entry, tag: delivery.tag, redelivered: delivery.redelivered)
            }
            // Unreadable everywhere: removed, never handed out as content; the store keeps it pending.
            try await self.base.ack(delivery.tag)
        }
        return nil
    }

    func ack(_ tag: DeliveryTag) async throws { try await self.base.ack(tag) }
    func ack(_ tags: [DeliveryTag]) async throws { try await self.base.ack(tags) }
    func nack(_ tag: DeliveryTag) async throws { try await self.base.nack(tag) }
    func close() async { await self.base.close() }
}

/// Sealed copies of the messages sealed last, so a message is sealed once for the store, its recipients' queue
/// entries and other nodes' inboxes alike (the same sealed value stored twice reuses no nonce with other content).
final class SealedCopies: Sendable {
    private let copies = Mutex<[MessageID: Message]>([:])
    private static let limit = 4096

    /// `message` sealed where `store` seals it: the copy made before, or a new one.
    func sealed(_ message: Message, by store: SealingMessageStore) async throws -> Message {
        if let copy = self.copies.withLock({ $0[message.id] }) {
            // Only the sealed fields are taken over: the rest (readBy, say) is this message's own.
            var reused = message
            reused.content = copy.content
            reused.attachments = copy.attachments
            return reused
        }
        let sealed = try await store.sealIfNeeded(message)
        self.copies.withLock { copies in
            if copies.count >= Self.limit { copies.removeAll(keepingCapacity: true) }
            copies[message.id] = sealed
        }
        return sealed
    }

    /// `entries` with their messages sealed where `store` seals them.
    func seal(_ entries: [QueueEntry], with store: SealingMessageStore) async throws -> [QueueEntry] {
        var result = entries
        for index in result.indices {
            result[index].message = try await self.sealed(result[index].message, by: store)
        }
        return result
    }
}

extension SealingMessageStore {
    /// `entry` with its message opened: from the entry, else from the store's copy; nil (logged) when neither opens.
    func opened(_ entry: QueueEntry) async -> QueueEntry? {
        var entry = entry
        switch self.open(entry.message) {
        case .success(let message):
            entry.message = message
            return entry
        case .failure:
            guard let stored = try? await self.message(entry.message.id) else {
                self.logger.error(
                    "Queued message cannot be opened and the store has no readable copy; removed from the queue, still pending in the store",
                    metadata: ["chat.message.id": "\(entry.message.id)", "chat.user.id": "\(LogSafe.value(entry.recipient.rawValue))"]
                )
                return nil
            }
            self.logger.notice("Queued message opened from the store's copy", metadata: ["chat.message.id": "\(entry.message.id)"])
            entry.message = stored
            return entry
        }
    }
}

/// A ``NodeRelay`` that seals the messages it forwards (a node's inbox is a durable queue) and opens what it reads.
public final class SealingNodeRelay: NodeRelay {
    /// The relay underneath.
    public let base: any NodeRelay
    let store: SealingMessageStore

    /// Seals for `base` as `store` seals messages.
    public init(base: any NodeRelay, store: SealingMessageStore) {
        self.base = base
        self.store = store
    }

    public func forward(_ entries: [QueueEntry], to node: NodeID) async throws -> Set<Int> {
        try await self.base.forward(try await self.store.sealedCopies.seal(entries, with: self.store), to: node)
    }

    public func announce(_ notice: PresenceNotice, to node: NodeID) async throws {
        try await self.base.announce(notice, to: node)
    }

    public func notify(_ notice: ChatNotice, to node: NodeID) async throws {
        try await self.base.notify(notice, to: node)
    }

    public func receive(for node: NodeID, deliver: @escaping @Sendable ([RelayMessage]) async -> Void) async throws {
        let store = self.store
        try await self.base.receive(for: node) { messages in await deliver(await Self.open(messages, store)) }
    }

    public func takeOver(inboxOf node: NodeID, deliver: @escaping @Sendable ([RelayMessage]) async -> Void) async throws -> InboxTakeover {
        let store = self.store
        return try await self.base.takeOver(inboxOf: node) { messages in await deliver(await Self.open(messages, store)) }
    }

    private static func open(_ messages: [RelayMessage], _ store: SealingMessageStore) async -> [RelayMessage] {
        var result: [RelayMessage] = []
        for message in messages {
            guard case .entry(let entry) = message else {
                result.append(message)
                continue
            }
            if let opened = await store.opened(entry) { result.append(.entry(opened)) }
        }
        return result
    }
}
