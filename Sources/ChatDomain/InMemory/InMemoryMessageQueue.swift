public import Foundation
import DequeModule
import Synchronization

/// A ``MessageQueue`` in process memory that behaves like the RabbitMQ topology: one FIFO per recipient, entries
/// expire after the TTL and are dead-lettered as expired, a full queue refuses new entries and dead-letters them
/// as rejected (it never drops old ones), acknowledgements remove entries, negative acknowledgements and closed
/// consumers return them to their place flagged redelivered.
///
/// ``setAvailable(_:)`` simulates a broker outage: every call throws ``ChatError/Code/unavailable`` and, as when a
/// connection drops, unacknowledged entries return to their queues and open consumers stop working.
public final class InMemoryMessageQueue: MessageQueue {
    /// The queue's limits.
    public struct Configuration: Sendable {
        /// How long an entry may wait, in seconds. Default 24 hours.
        public var messageTTL: TimeInterval = 24 * 60 * 60
        /// The most entries a recipient's queue holds. Default 100,000.
        public var maxLength: Int = 100_000
        /// The most entries all queues hold together (waiting or unacknowledged), so memory stays bounded however
        /// many recipients one chat names; past it new entries are refused like those of a full queue (they stay
        /// pending in the store). Default 1,000,000.
        public var maxTotalEntries: Int = 1_000_000

        /// The defaults.
        public init() {}
    }

    private struct Item {
        var sequence: UInt64
        var entry: QueueEntry
        /// When the queue took the entry; the TTL counts from here, as in RabbitMQ. Items are in sequence order,
        /// so their arrival times never decrease from head to tail.
        var arrivedAt: Date
        var redelivered: Bool
    }

    private struct Unacknowledged {
        var item: Item
        var user: UserID
        var consumer: UInt64
    }

    private struct State {
        var available = true
        /// Bumped on every outage, which invalidates every open consumer.
        var generation: UInt64 = 0
        var queues: [UserID: Deque<Item>] = [:]
        var unacknowledged: [UInt64: Unacknowledged] = [:]
        var consumers: [UInt64: UserID] = [:]
        var nextSequence: UInt64 = 0
        var nextTag: UInt64 = 1
        var nextConsumer: UInt64 = 1
        var deadLettered: [DeadLetter] = []
        /// Entries held: waiting in a queue or delivered and unacknowledged.
        var total = 0
        /// Entries enqueued since every queue was last checked for expired entries.
        var enqueuedSinceSweep = 0
        /// The newest 50,000 events, as RabbitMQ's `message_delivery` queue keeps them (a ring: O(1) per event).
        var deliveryEvents: Deque<DeliveryEvent> = []
    }

    let configuration: Configuration
    private let clock: any WallClock
    private let state = Mutex(State())
    private let deadLetterStream: AsyncStream<DeadLetter>
    private let deadLetterContinuation: AsyncStream<DeadLetter>.Continuation

    /// Creates an empty queue that reads the time from `clock`.
    public init(configuration: Configuration = .init(), clock: any WallClock = SystemWallClock()) {
        self.configuration = configuration
        self.clock = clock
        (self.deadLetterStream, self.deadLetterContinuation) = AsyncStream.makeStream()
    }

    /// Turns the simulated outage off (`true`) or on (`false`).
    public func setAvailable(_ available: Bool) {
        self.state.withLock { state in
            guard state.available != available else { return }
            state.available = available
            guard !available else { return }
            state.generation += 1
            for tag in Array(state.unacknowledged.keys) {
                Self.returnToQueue(&state, tag: tag)
            }
            state.consumers = [:]
        }
    }

    /// Every entry dead-lettered so far (the last 10,000), oldest first.
    /// How many entries all queues hold (waiting or unacknowledged).
    public var totalEntries: Int {
        self.state.withLock { $0.total }
    }

    public var deadLettered: [DeadLetter] {
        self.state.withLock { $0.deadLettered }
    }

    public func enqueue(_ entries: [QueueEntry], for user: UserID) async throws -> [MessageID] {
        let now = self.clock.now()
        let (rejected, deadLetters) = try self.withAvailableState { state in
            var deadLetters = self.expire(&state, user: user, now: now)
            state.enqueuedSinceSweep += entries.count
            if state.enqueuedSinceSweep >= 10_000 || state.total + entries.count > self.configuration.maxTotalEntries {
                // Queues nobody drains (recipients who never come back) expire here, not only when touched.
                state.enqueuedSinceSweep = 0
                for other in Array(state.queues.keys) { deadLetters += self.expire(&state, user: other, now: now) }
            }
            var rejected: [MessageID] = []
            for entry in entries {
                if state.queues[user, default: []].count >= self.configuration.maxLength || state.total >= self.configuration.maxTotalEntries {
                    rejected.append(entry.message.id)
                    deadLetters.append(DeadLetter(entry: entry, reason: .rejected, at: now))
                    continue
                }
                state.queues[user, default: []].append(
                    Item(sequence: state.nextSequence, entry: entry, arrivedAt: now, redelivered: false)
                )
                state.nextSequence += 1
                state.total += 1
            }
            return (rejected, deadLetters)
        }
        self.publish(deadLetters)
        return rejected
    }

    public func consumer(for user: UserID, prefetch: Int) async throws -> any QueueConsumer {
        let (id, generation) = try self.withAvailableState { state in
            defer { state.nextConsumer += 1 }
            state.consumers[state.nextConsumer] = user
            return (state.nextConsumer, state.generation)
        }
        return Consumer(queue: self, user: user, id: id, generation: generation, prefetch: max(prefetch, 1))
    }

    public func depth(for user: UserID) async throws -> QueueDepth {
        let now = self.clock.now()
        let (depth, deadLetters) = try self.withAvailableState { state in
            let deadLetters = self.expire(&state, user: user, now: now)
            let depth = QueueDepth(
                ready: state.queues[user]?.count ?? 0,
                unacknowledged: state.unacknowledged.values.count { $0.user == user },
                consumers: state.consumers.values.count { $0 == user }
            )
            return (depth, deadLetters)
        }
        self.publish(deadLetters)
        return depth
    }

    public func deadLetters() -> AsyncStream<DeadLetter> {
        self.deadLetterStream
    }

    /// The delivery events published so far (the last 50,000, like RabbitMQ's `message_delivery` queue).
    public var deliveryEvents: [DeliveryEvent] {
        self.state.withLock { Array($0.deliveryEvents) }
    }

    public func publishDeliveryEvents(_ events: [DeliveryEvent]) async throws {
        try self.withAvailableState { state in
            state.deliveryEvents.append(contentsOf: events)
            if state.deliveryEvents.count > 50_000 { state.deliveryEvents.removeFirst(state.deliveryEvents.count - 50_000) }
        }
    }

    // MARK: Consumer operations

    fileprivate func next(user: UserID, consumer: UInt64, generation: UInt64, prefetch: Int) throws -> QueueDelivery? {
        let now = self.clock.now()
        let (delivery, deadLetters) = try self.withConsumerState(consumer, generation: generation) { state in
            guard state.unacknowledged.values.count(where: { $0.consumer == consumer }) < prefetch else {
                throw ChatError(.badRequest, "consumer has \(prefetch) unacknowledged deliveries (its prefetch); ack some first")
            }
            let deadLetters = self.expire(&state, user: user, now: now)
            guard let item = state.queues[user]?.popFirst() else { return (nil as QueueDelivery?, deadLetters) }
            let tag = state.nextTag
            state.nextTag += 1
            state.unacknowledged[tag] = Unacknowledged(item: item, user: user, consumer: consumer)
            return (QueueDelivery(entry: item.entry, tag: DeliveryTag(tag), redelivered: item.redelivered), deadLetters)
        }
        self.publish(deadLetters)
        return delivery
    }

    fileprivate func settle(_ tag: DeliveryTag, consumer: UInt64, generation: UInt64, requeue: Bool) throws {
        try self.withConsumerState(consumer, generation: generation) { state in
            guard let unacknowledged = state.unacknowledged[tag.rawValue], unacknowledged.consumer == consumer else {
                throw ChatError(.badRequest, "unknown delivery tag \(tag) for this consumer")
            }
            if requeue {
                Self.returnToQueue(&state, tag: tag.rawValue)
            } else {
                state.unacknowledged[tag.rawValue] = nil
                state.total -= 1
            }
        }
    }

    fileprivate func close(consumer: UInt64, generation: UInt64) {
        self.state.withLock { state in
            guard state.generation == generation, state.consumers.removeValue(forKey: consumer) != nil else { return }
            let tags = state.unacknowledged.filter { $0.value.consumer == consumer }.map(\.key).sorted()
            for tag in tags { Self.returnToQueue(&state, tag: tag) }
        }
    }

    // MARK: Helpers

    private func withAvailableState<Result>(_ body: (inout State) throws -> Result) throws -> Result {
        try self.state.withLock { state in
            guard state.available else {
                throw ChatError(.unavailable, "the in-memory queue is switched to a simulated outage")
            }
            return try body(&state)
        }
    }

    private func withConsumerState<Result>(
        _ consumer: UInt64,
        generation: UInt64,
        _ body: (inout State) throws -> Result
    ) throws -> Result {
        try self.withAvailableState { state in
            guard state.generation == generation, state.consumers[consumer] != nil else {
                throw ChatError(.unavailable, "this consumer was closed or lost its connection; open a new one")
            }
            return try body(&state)
        }
    }

    /// Removes and returns the dead letters of `user`'s entries that outlived the TTL; they are all at the head.
    private func expire(_ state: inout State, user: UserID, now: Date) -> [DeadLetter] {
        var expired: [DeadLetter] = []
        while let head = state.queues[user]?.first,
            now.timeIntervalSince(head.arrivedAt) >= self.configuration.messageTTL
        {
            state.queues[user]?.removeFirst()
            state.total -= 1
            expired.append(DeadLetter(entry: head.entry, reason: .expired, at: now))
        }
        if state.queues[user]?.isEmpty == true { state.queues[user] = nil }
        return expired
    }

    private func publish(_ deadLetters: [DeadLetter]) {
        guard !deadLetters.isEmpty else { return }
        self.state.withLock { state in
            state.deadLettered.append(contentsOf: deadLetters)
            if state.deadLettered.count > 10_000 { state.deadLettered.removeFirst(state.deadLettered.count - 10_000) }
        }
        for deadLetter in deadLetters { self.deadLetterContinuation.yield(deadLetter) }
    }

    /// Puts an unacknowledged entry back at its place in its queue, flagged redelivered.
    private static func returnToQueue(_ state: inout State, tag: UInt64) {
        guard var unacknowledged = state.unacknowledged.removeValue(forKey: tag) else { return }
        unacknowledged.item.redelivered = true
        var queue = state.queues[unacknowledged.user, default: []]
        let index = queue.firstIndex { $0.sequence > unacknowledged.item.sequence } ?? queue.endIndex
        queue.insert(unacknowledged.item, at: index)
        state.queues[unacknowledged.user] = queue
    }

    private final class Consumer: QueueConsumer {
        let queue: InMemoryMessageQueue
        let user: UserID
        let id: UInt64
        let generation: UInt64
        let prefetch: Int

        init(queue: InMemoryMessageQueue, user: UserID, id: UInt64, generation: UInt64, prefetch: Int) {
            self.queue = queue
            self.user = user
            self.id = id
            self.generation = generation
            self.prefetch = prefetch
        }

        func next() async throws -> QueueDelivery? {
            try self.queue.next(user: self.user, consumer: self.id, generation: self.generation, prefetch: self.prefetch)
        }

        func ack(_ tag: DeliveryTag) async throws {
            try self.queue.settle(tag, consumer: self.id, generation: self.generation, requeue: false)
        }

        func nack(_ tag: DeliveryTag) async throws {
            try self.queue.settle(tag, consumer: self.id, generation: self.generation, requeue: true)
        }

        func close() async {
            self.queue.close(consumer: self.id, generation: self.generation)
        }
    }
}
