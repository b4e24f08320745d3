import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// The in-memory queue keeps RabbitMQ's promises: FIFO, TTL with dead-lettering, bounded length, ack/nack.
@Suite("In-memory queue")
struct InMemoryQueueTests {
    private let clock = ManualWallClock()
    private let generator: MessageIDGenerator
    private let sender = User(id: "alice", username: "Alice")

    init() {
        self.generator = MessageIDGenerator(clock: self.clock)
    }

    private func entries(_ count: Int, for user: UserID = "bob") -> [QueueEntry] {
        (0..<count).map { index in
            let message = Message(id: self.generator.next(), chatID: "c", senderID: "alice", content: "m\(index)", createdAt: self.clock.now())
            return QueueEntry(message: message, sender: self.sender, recipient: user, enqueuedAt: self.clock.now())
        }
    }

    private func drainAll(_ consumer: any QueueConsumer) async throws -> [QueueDelivery] {
        var deliveries: [QueueDelivery] = []
        while let delivery = try await consumer.next() { deliveries.append(delivery) }
        return deliveries
    }

    @Test("Entries come out in order; ack removes them, nack returns them in place flagged redelivered")
    func ackAndNack() async throws {
        let queue = InMemoryMessageQueue(clock: self.clock)
        let entries = self.entries(3)
        #expect(try await queue.enqueue(entries, for: "bob").isEmpty)
        let consumer = try await queue.consumer(for: "bob", prefetch: 10)
        let first = try await self.drainAll(consumer)
        #expect(first.map(\.entry) == entries)
        #expect(first.allSatisfy { !$0.redelivered })
        try await consumer.ack(first[0].tag)
        try await consumer.nack(first[2].tag)
        try await consumer.nack(first[1].tag)
        #expect(try await queue.depth(for: "bob") == QueueDepth(ready: 2, unacknowledged: 0, consumers: 1))

        let second = try await self.drainAll(consumer)
        #expect(second.map(\.entry.message.content) == ["m1", "m2"])
        #expect(second.allSatisfy { $0.redelivered })
        await expectThrows { try await consumer.ack(first[0].tag) }
    }

    @Test("Closing a consumer returns its unacknowledged entries")
    func closeReturnsUnacked() async throws {
        let queue = InMemoryMessageQueue(clock: self.clock)
        _ = try await queue.enqueue(self.entries(2), for: "bob")
        let consumer = try await queue.consumer(for: "bob", prefetch: 10)
        _ = try await self.drainAll(consumer)
        #expect(try await queue.depth(for: "bob").unacknowledged == 2)
        await consumer.close()
        #expect(try await queue.depth(for: "bob") == QueueDepth(ready: 2, unacknowledged: 0, consumers: 0))
    }

    @Test("Entries past the TTL are dead-lettered as expired and never handed out")
    func ttl() async throws {
        var configuration = InMemoryMessageQueue.Configuration()
        configuration.messageTTL = 60
        let queue = InMemoryMessageQueue(configuration: configuration, clock: self.clock)
        _ = try await queue.enqueue(self.entries(2), for: "bob")
        self.clock.advance(by: 30)
        _ = try await queue.enqueue(self.entries(1), for: "bob")
        self.clock.advance(by: 30)
        let consumer = try await queue.consumer(for: "bob", prefetch: 10)
        #expect(try await self.drainAll(consumer).count == 1)
        #expect(queue.deadLettered.map(\.reason) == [.expired, .expired])
        var iterator = queue.deadLetters().makeAsyncIterator()
        #expect(await iterator.next()?.reason == .expired)
    }

    @Test("A full queue refuses new entries and dead-letters them; nothing queued is dropped")
    func maxLength() async throws {
        var configuration = InMemoryMessageQueue.Configuration()
        configuration.maxLength = 10
        let queue = InMemoryMessageQueue(configuration: configuration, clock: self.clock)
        let entries = self.entries(11)
        let rejected = try await queue.enqueue(entries, for: "bob")
        #expect(rejected == [entries[10].message.id])
        #expect(try await queue.depth(for: "bob").ready == 10)
        #expect(queue.deadLettered.map(\.entry) == [entries[10]])
        #expect(queue.deadLettered.map(\.reason) == [.rejected])
        let consumer = try await queue.consumer(for: "bob", prefetch: 20)
        #expect(try await self.drainAll(consumer).map(\.entry) == Array(entries.prefix(10)))
    }

    @Test("An outage fails every call with unavailable and returns unacknowledged entries, like a lost connection")
    func outage() async throws {
        let queue = InMemoryMessageQueue(clock: self.clock)
        _ = try await queue.enqueue(self.entries(2), for: "bob")
        let consumer = try await queue.consumer(for: "bob", prefetch: 10)
        _ = try await consumer.next()
        queue.setAvailable(false)
        do {
            _ = try await queue.enqueue(self.entries(1), for: "bob")
            Issue.record("enqueue succeeded during an outage")
        } catch let error as ChatError {
            #expect(error.code == .unavailable)
        }
        queue.setAvailable(true)
        await expectThrows { _ = try await consumer.next() }
        #expect(try await queue.depth(for: "bob") == QueueDepth(ready: 2, unacknowledged: 0, consumers: 0))
        let fresh = try await queue.consumer(for: "bob", prefetch: 10)
        let deliveries = try await self.drainAll(fresh)
        #expect(deliveries.map(\.redelivered) == [true, false])
    }

    @Test("Queues of different users are independent")
    func perUserQueues() async throws {
        let queue = InMemoryMessageQueue(clock: self.clock)
        _ = try await queue.enqueue(self.entries(2, for: "bob"), for: "bob")
        _ = try await queue.enqueue(self.entries(1, for: "carol"), for: "carol")
        #expect(try await queue.depth(for: "bob").ready == 2)
        #expect(try await queue.depth(for: "carol").ready == 1)
        #expect(try await queue.depth(for: "dave").ready == 0)
    }
}

func expectThrows(sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected an error", sourceLocation: sourceLocation)
    } catch {}
}
