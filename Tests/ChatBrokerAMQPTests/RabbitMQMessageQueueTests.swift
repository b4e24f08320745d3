@testable import ChatBrokerAMQP
import CRabbitMQ
import ChatDomain
import Dispatch
import ChatScenarioKit
import Foundation
import Testing

/// The RabbitMQ offline queue against a real broker on loopback. Tests that stop or restart the broker have a node
/// of their own; the others (``RabbitMQSharedNodeTests``) share one. Tests run one at a time to keep the two cores
/// for the brokers.
@Suite("RabbitMQ offline queue", .serialized)
struct RabbitMQMessageQueueTests {
    fileprivate static let sender = User(id: "alice", username: "Alice")

    fileprivate static func entries(_ count: Int, for user: UserID = "bob") -> [QueueEntry] {
        let generator = MessageIDGenerator()
        return (0..<count).map { index in
            let message = Message(id: generator.next(), chatID: "c", senderID: "alice", content: "m\(index) ✓", createdAt: Date())
            return QueueEntry(message: message, sender: Self.sender, recipient: user, enqueuedAt: Date())
        }
    }

    fileprivate static func drain(_ consumer: any QueueConsumer) async throws -> [QueueDelivery] {
        var deliveries: [QueueDelivery] = []
        while let delivery = try await consumer.next() { deliveries.append(delivery) }
        return deliveries
    }

    @Test("Enqueue then drain: same messages in order; ack removes, nack keeps them flagged redelivered; restart keeps all")
    func enqueueDrainAndDurability() async throws {
        try await withRabbitServer { server in
            let queue = server.makeQueue()
            let entries = Self.entries(1000)
            #expect(try await queue.enqueue(entries, for: "bob").isEmpty)
            #expect(try await queue.depth(for: "bob").ready == 1000)

            // Durability: persistent messages in a durable queue survive a broker restart.
            try await server.restart()
            await eventually("the adapter reconnects by itself", timeout: .seconds(20), every: .milliseconds(50)) { (try? await queue.depth(for: "bob").ready) == 1000 }

            // A window as large as the queue, since nothing is acknowledged until every entry was read.
            let consumer = try await queue.consumer(for: "bob", prefetch: 1000)
            let first = try await Self.drain(consumer)
            try #require(first.count == 1000)
            #expect(first.map(\.entry) == entries, "same ids, payload and order")
            for delivery in first.prefix(998) { try await consumer.ack(delivery.tag) }
            try await consumer.nack(first[998].tag)
            try await consumer.nack(first[999].tag)
            let again = try await Self.drain(consumer)
            #expect(again.map(\.entry.message.id) == entries.suffix(2).map(\.message.id))
            #expect(again.allSatisfy { $0.redelivered })
            for delivery in again { try await consumer.ack(delivery.tag) }
            #expect(try await queue.depth(for: "bob").ready == 0)
        }
    }

    @Test("Broker down: enqueue fails fast with unavailable; back: the adapter recovers by itself")
    func brokerDown() async throws {
        try await withRabbitServer { server in
            let queue = server.makeQueue()
            _ = try await queue.enqueue(Self.entries(1), for: "carol")
            await server.stop()
            for _ in 0..<3 {
                let start = ContinuousClock.now
                do {
                    _ = try await queue.enqueue(Self.entries(1), for: "carol")
                    Issue.record("enqueue succeeded with the broker stopped")
                } catch let error as ChatError {
                    #expect(error.code == .unavailable)
                }
                #expect(ContinuousClock.now - start < .seconds(1), "fails fast")
            }
            try await server.restart()
            await eventually("enqueue works again", timeout: .seconds(10), every: .milliseconds(50)) {
                (try? await queue.enqueue(Self.entries(1), for: "carol")) != nil
            }
            #expect(try await queue.depth(for: "carol").ready >= 2, "the first entry survived, the new one arrived")
        }
    }
}

/// The RabbitMQ offline queue's behaviours that need no broker restart: one node for the suite, a virtual host
/// for each test.
@Suite("RabbitMQ offline queue on a shared node", .serialized, .sharedRabbitNode)
struct RabbitMQSharedNodeTests {
    private typealias Fixtures = RabbitMQMessageQueueTests

    @Test("TTL: an undrained entry is dead-lettered and reported expired")
    func ttl() async throws {
        try await withIsolatedRabbitHost { host in
            let queue = host.makeQueue { $0.messageTTL = .seconds(1) }
            let entries = Fixtures.entries(1, for: "dave")
            _ = try await queue.enqueue(entries, for: "dave")
            try await Task.sleep(for: .milliseconds(1000))
            await eventually("the entry expired", timeout: .seconds(20), every: .milliseconds(50)) { (try? await queue.depth(for: "dave").ready) == 0 }
            var iterator = queue.deadLetters().makeAsyncIterator()
            await eventually("the broker dead-lettered it", timeout: .seconds(20), every: .milliseconds(50)) { (try? await queue.deadLetterDepth()) == 1 }
            await queue.readDeadLetters()
            let deadLetter = await iterator.next()
            #expect(deadLetter?.reason == .expired)
            #expect(deadLetter?.entry == entries.first)
            #expect(try await queue.deadLetterDepth() == 0, "acknowledged once handed over")
        }
    }

    @Test("Overflow: with max length 10 the 11th enqueue is refused and reported; nothing queued is dropped")
    func overflow() async throws {
        try await withIsolatedRabbitHost { host in
            let queue = host.makeQueue { $0.maxLength = 10 }
            let entries = Fixtures.entries(11, for: "erin")
            let refused = try await queue.enqueue(entries, for: "erin")
            #expect(refused == [entries[10].message.id])
            #expect(try await queue.depth(for: "erin").ready == 10)
            let consumer = try await queue.consumer(for: "erin", prefetch: 20)
            #expect(try await Fixtures.drain(consumer).map(\.entry) == Array(entries.prefix(10)))

            // On the same broker: delivery events land in message_delivery, confirmed.
            let events = entries.prefix(3).map { DeliveryEvent(messageID: $0.message.id, userID: "erin", status: .sent, timestamp: Date()) }
            try await queue.publishDeliveryEvents(events)
            #expect(try await queue.deliveryEventDepth() == 3)
        }
    }

    @Test("Concurrent enqueues share the publish window: each user's queue holds exactly its own entries, in order")
    func concurrentEnqueues() async throws {
        try await withIsolatedRabbitHost { host in
            let queue = host.makeQueue()
            let users = (0..<16).map { UserID("user-\($0)") }
            let entries = Dictionary(uniqueKeysWithValues: users.map { ($0, Fixtures.entries(120, for: $0)) })
            try await withThrowingTaskGroup(of: Void.self) { group in
                for user in users {
                    group.addTask {
                        // Batches of 40, one after the other per user, all users at once: many requests in flight.
                        for start in stride(from: 0, to: 120, by: 40) {
                            let refused = try await queue.enqueue(Array(entries[user]![start..<start + 40]), for: user)
                            #expect(refused.isEmpty)
                        }
                    }
                }
                try await group.waitForAll()
            }
            for user in users {
                let consumer = try await queue.consumer(for: user, prefetch: 200)
                #expect(try await Fixtures.drain(consumer).map(\.entry) == entries[user], "\(user)")
                await consumer.close()
            }
        }
    }

    @Test("Node inboxes: a node that never read its inbox refuses a forward; a reading node gets entries in order; an inbox outlives its reader")
    func nodeRelay() async throws {
        try await withIsolatedRabbitHost { host in
            let sender = host.makeQueue()
            let node = host.makeQueue()
            // No inbox for node-b yet: every entry comes back as refused (returned as unroutable), not an error.
            let early = Fixtures.entries(3, for: "bob")
            let refused = try await sender.forward(early, to: "node-b")
            #expect(refused == [0, 1, 2])

            let received = Locked<[QueueEntry]>([])
            let notices = Locked<[PresenceNotice]>([])
            let chatNotices = Locked<[ChatNotice]>([])
            let reader = Task {
                try await node.receive(for: "node-b") { messages in
                    for message in messages {
                        switch message {
                        case .entry(let entry): received.withLock { $0.append(entry) }
                        case .presence(let notice): notices.withLock { $0.append(notice) }
                        case .notice(let notice): chatNotices.withLock { $0.append(notice) }
                        }
                    }
                }
            }
            // The reader declares the inbox: a probe is refused until then, and arrives once taken.
            let probe = Fixtures.entries(1, for: "bob")
            await eventually("node-b's inbox to exist", timeout: .seconds(10), every: .milliseconds(20)) {
                (try? await sender.forward(probe, to: "node-b"))?.isEmpty == true
            }
            await eventually("the probe to arrive", timeout: .seconds(10), every: .milliseconds(20)) { received.withLock { $0 } == probe }
            received.withLock { $0.removeAll() }
            let entries = Fixtures.entries(50, for: "bob")
            for start in stride(from: 0, to: 50, by: 10) {
                let refused = try await sender.forward(Array(entries[start..<start + 10]), to: "node-b")
                #expect(refused.isEmpty)
            }
            await eventually("node-b to receive all 50", timeout: .seconds(10), every: .milliseconds(20)) { received.withLock { $0.count } == 50 }
            #expect(received.withLock { $0 } == entries, "in order, whole")
            // Presence notices share the inbox.
            let notice = PresenceNotice(change: PresenceChange(userID: "carol", timestamp: Date(timeIntervalSince1970: 1_767_693_600)), online: true, recipients: ["bob"])
            try await sender.announce(notice, to: "node-b")
            await eventually("the notice to arrive", timeout: .seconds(10), every: .milliseconds(20)) { notices.withLock { $0 } == [notice] }
            // So do read marks and typing changes, each as what it is.
            let read = ChatNotice(
                read: ReadMark(chatID: "chat-1", userID: "carol", messageID: entries[3].message.id, readAt: Date(timeIntervalSince1970: 1_767_693_601)),
                recipients: ["bob"]
            )
            let typing = ChatNotice(typing: TypingChange(chatID: "chat-1", userID: "carol", typing: true), recipients: ["bob"])
            try await sender.notify(read, to: "node-b")
            try await sender.notify(typing, to: "node-b")
            await eventually("the chat notices to arrive", timeout: .seconds(10), every: .milliseconds(20)) { chatNotices.withLock { $0 } == [read, typing] }
            #expect(chatNotices.withLock { $0.map { $0.event?.name } } == ["message:read", "typing"])
            reader.cancel()
            _ = try? await reader.value

            // The inbox is durable: what is forwarded while nobody reads waits for the next reader.
            let later = Fixtures.entries(5, for: "bob")
            let refusedLater = try await sender.forward(later, to: "node-b")
            #expect(refusedLater.isEmpty)
            let again = Locked<[QueueEntry]>([])
            let second = Task {
                try await node.receive(for: "node-b") { messages in
                    for case .entry(let entry) in messages { again.withLock { $0.append(entry) } }
                }
            }
            await eventually("the next reader to get them", timeout: .seconds(10), every: .milliseconds(20)) { again.withLock { $0 } == later }
            second.cancel()
            let outcome = await second.result
            if case .failure(let error) = outcome { Issue.record("the second reader failed: \(error)") }
            #expect(again.withLock { $0.map(\.message.content) } == later.map(\.message.content), "\(outcome)")
        }
    }

    @Test("Taking over a dead node's inbox: left alone while read; then every entry handed on once, the inbox deleted, later forwards refused")
    func inboxTakeover() async throws {
        try await withIsolatedRabbitHost { host in
            let sender = host.makeQueue()
            let node = host.makeQueue()
            let janitor = host.makeQueue()
            #expect(try await janitor.takeOver(inboxOf: "node-never") { _ in } == InboxTakeover(moved: 0, removed: true), "no inbox: nothing to do")

            let reader = Task { try await node.receive(for: "node-d") { _ in } }
            let probe = Fixtures.entries(1, for: "bob")
            await eventually("node-d's inbox to exist", timeout: .seconds(10), every: .milliseconds(20)) {
                (try? await sender.forward(probe, to: "node-d"))?.isEmpty == true
            }
            #expect(try await janitor.takeOver(inboxOf: "node-d") { _ in } == InboxTakeover(moved: 0, removed: false), "still read: left alone")
            reader.cancel()
            _ = try? await reader.value
            await eventually("node-d's reader to be gone", timeout: .seconds(10), every: .milliseconds(50)) {
                (try? await janitor.inboxDepth(of: "node-d"))?.consumers == 0
            }

            // node-d is dead: 600 entries (more than one prefetch) wait in its inbox.
            let entries = Fixtures.entries(600, for: "bob")
            for start in stride(from: 0, to: 600, by: 100) {
                #expect(try await sender.forward(Array(entries[start..<start + 100]), to: "node-d").isEmpty)
            }
            await eventually("the inbox to hold them", timeout: .seconds(10), every: .milliseconds(50)) {
                (try? await janitor.inboxDepth(of: "node-d"))?.ready == 600
            }
            let moved = Locked<[QueueEntry]>([])
            let takeover = try await janitor.takeOver(inboxOf: "node-d") { messages in
                for case .entry(let entry) in messages { moved.withLock { $0.append(entry) } }
            }
            #expect(takeover == InboxTakeover(moved: 600, removed: true))
            #expect(moved.withLock { $0 } == entries, "each once, in order")
            #expect(try await janitor.inboxDepth(of: "node-d") == nil, "the inbox is gone")
            #expect(try await sender.forward(probe, to: "node-d") == [0], "refused, for the offline path")
        }
    }

    @Test("Quorum queues (a cluster's setting): a user's offline queue and a node's inbox work as the classic ones do")
    func quorumQueues() async throws {
        try await withIsolatedRabbitHost { host in
            let queue = host.makeQueue { $0.queueType = .quorum }
            let entries = Fixtures.entries(20, for: "quinn")
            #expect(try await queue.enqueue(entries, for: "quinn").isEmpty)
            let consumer = try await queue.consumer(for: "quinn", prefetch: 50)
            #expect(try await Fixtures.drain(consumer).map(\.entry) == entries)
            await consumer.close()

            let node = host.makeQueue { $0.queueType = .quorum }
            let reader = Task { try await node.receive(for: "node-q") { _ in } }
            await eventually("node-q's inbox to be read", timeout: .seconds(10), every: .milliseconds(50)) {
                (try? await queue.inboxDepth(of: "node-q"))?.consumers == 1
            }
            reader.cancel()
            _ = try? await reader.value
            await eventually("node-q's reader to be gone", timeout: .seconds(10), every: .milliseconds(50)) {
                (try? await queue.inboxDepth(of: "node-q"))?.consumers == 0
            }
            let waiting = Fixtures.entries(5, for: "quinn")
            #expect(try await queue.forward(waiting, to: "node-q").isEmpty)
            let moved = Locked<[QueueEntry]>([])
            let takeover = try await queue.takeOver(inboxOf: "node-q") { messages in
                for case .entry(let entry) in messages { moved.withLock { $0.append(entry) } }
            }
            #expect(takeover == InboxTakeover(moved: 5, removed: true) && moved.value == waiting)
        }
    }

    @Test("A queue deleted behind the adapter's back: the returned publishes go to the queue declared again, none lost")
    func deletedQueue() async throws {
        try await withIsolatedRabbitHost { host in
            let queue = host.makeQueue()
            _ = try await queue.enqueue(Fixtures.entries(3, for: "gina"), for: "gina")
            try await Self.deleteQueue(Topology.queue(of: "gina"), configuration: queue.configuration)

            // The adapter still believes the queue exists: the broker returns these as unroutable.
            let entries = Fixtures.entries(5, for: "gina")
            #expect(try await queue.enqueue(entries, for: "gina").isEmpty)
            #expect(try await queue.depth(for: "gina").ready == 5)
            let consumer = try await queue.consumer(for: "gina", prefetch: 10)
            #expect(try await Fixtures.drain(consumer).map(\.entry) == entries)
        }
    }

    @Test("A consumer closed mid-drain returns what it did not acknowledge; the next drains, on its kept connection, see only their own queue")
    func consumerConnectionReused() async throws {
        try await withIsolatedRabbitHost { host in
            let queue = host.makeQueue()
            let hana = Fixtures.entries(10, for: "hana")
            let ivan = Fixtures.entries(3, for: "ivan")
            _ = try await queue.enqueue(hana, for: "hana")
            _ = try await queue.enqueue(ivan, for: "ivan")

            // Read 2 of a window of 5 (the other 3 are on their way or buffered), acknowledge 1, close.
            let first = try await queue.consumer(for: "hana", prefetch: 5)
            let one = try #require(try await first.next())
            _ = try #require(try await first.next())
            try await first.ack(one.tag)
            await first.close()

            // The next drains reuse the connection: another user's queue gets none of hana's deliveries.
            let other = try await queue.consumer(for: "ivan", prefetch: 5)
            #expect(try await Fixtures.drain(other).map(\.entry) == ivan)
            await other.close()
            let again = try await queue.consumer(for: "hana", prefetch: 20)
            let rest = try await Fixtures.drain(again)
            #expect(rest.map(\.entry) == Array(hana.dropFirst()), "in order, none lost, none twice")
            #expect(rest.prefix(4).allSatisfy { $0.redelivered }, "the read and the prefetched ones came back")
            for delivery in rest { try await again.ack(delivery.tag) }
            await again.close()
            #expect(try await queue.depth(for: "hana").ready == 0)
        }
    }

    /// Deletes `queue` over a connection of its own (an operator's doing), off the cooperative pool.
    private static func deleteQueue(_ queue: String, configuration: AMQPQueueConfiguration) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            DispatchQueue.global().async {
                do {
                    let connection = try AMQPConnection.open(configuration)
                    defer {
                        _ = amqp_connection_close(connection, AMQP_REPLY_SUCCESS)
                        _ = amqp_destroy_connection(connection)
                    }
                    _ = amqp_channel_open(connection, 1)
                    _ = amqp_queue_delete(connection, 1, amqp_cstring_bytes(queue), 0, 0)
                    let reply = amqp_get_rpc_reply(connection)
                    guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
                        throw AMQPQueueError(code: .channelClosed, message: "could not delete \(queue)")
                    }
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    @Test("A drain cut off by a closed connection leaves its unacknowledged entries in the queue")
    func interruptedDrain() async throws {
        try await withIsolatedRabbitHost { host in
            let writer = host.makeQueue()
            let entries = Fixtures.entries(5, for: "frank")
            _ = try await writer.enqueue(entries, for: "frank")
            let reader = host.makeQueue()
            let consumer = try await reader.consumer(for: "frank", prefetch: 5)
            let first = try #require(try await consumer.next())
            try await consumer.ack(first.tag)
            _ = try await consumer.next()
            _ = try await consumer.next()
            await reader.close()  // the connection goes away mid-drain

            let fresh = try await writer.consumer(for: "frank", prefetch: 5)
            let rest = try await Fixtures.drain(fresh)
            #expect(rest.map(\.entry) == Array(entries.dropFirst()))
            #expect(rest.prefix(2).allSatisfy { $0.redelivered })
        }
    }
}


extension RabbitMQSharedNodeTests {
    /// The product scenarios that any queue can run (the others switch the queue off or move its clock), on the
    /// shared node, each scenario in a virtual host of its own.
    @Suite("Product scenarios on RabbitMQ", .serialized)
    struct Scenarios {
        @Test("The product scenarios pass with the RabbitMQ queue", arguments: ProductScenario.portable)
        func productScenarios(_ scenario: ProductScenario) async throws {
            try await withIsolatedRabbitHost { host in
                let queue = host.makeQueue()
                try await scenario.run(queue: { queue })
            }
        }
    }
}
