import ChatDomain
import ChatScenarioKit
import Foundation
import Synchronization
import Testing

/// Ordering, failure and race behaviour of the delivery engine.
@Suite("Delivery reliability")
struct DeliveryReliabilityTests {
    @Test("A failed emit during a drain leaves it and the rest queued, in order, for the next reconnect")
    func failureDuringDrain() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            var ids: [MessageID] = []
            for index in 1...5 { ids.append(try await h.send("m\(index)", from: alice).messageID) }

            let emits = Locked(0)
            let bob1 = await h.connect(Harness.bob) { event in
                guard case .messageReceived = event else { return .acknowledge }
                let count = emits.withLock { count in
                    count += 1
                    return count
                }
                return count == 3 ? .failWrite : .acknowledge
            }
            #expect(await h.service.reconnected(bob1) == 2)
            #expect(h.contents(of: bob1).prefix(2) == ["m1", "m2"])
            #expect(try await h.depth(of: Harness.bob) == 3, "m3, m4 and m5 stay queued")
            #expect(await h.service.currentStatistics().returnedToQueue == 3)
            #expect(h.logs.contains("Delivered 2 queued messages to bob"))

            await h.drop(bob1)
            let bob2 = await h.connect(Harness.bob)
            #expect(await h.service.reconnected(bob2) == 3)
            #expect(h.contents(of: bob2) == ["m3", "m4", "m5"])
            #expect(try await h.depth(of: Harness.bob) == 0)

            // Across both connections each message arrived with the one id it was stored under.
            var seen: [String: MessageID] = [:]
            for received in h.transport.receivedMessages(of: bob1) + h.transport.receivedMessages(of: bob2) {
                #expect(seen[received.message.content, default: received.message.id] == received.message.id)
                seen[received.message.content] = received.message.id
            }
            #expect(Set(seen.values) == Set(ids))
        }
    }

    @Test("1,000 messages sent while 1,000 queued ones drain arrive as 2,000 distinct messages in acceptance order")
    func sendDuringDrainRace() async throws {
        var configuration = ChatServiceConfiguration()
        configuration.drainWindow = 16
        try await withHarness(configuration: configuration) { h in
            let alice = await h.connect(Harness.alice)
            for index in 0..<1000 { try await h.send("q\(index)", from: alice) }
            #expect(try await h.depth(of: Harness.bob) == 1000)

            let bob = await h.connect(Harness.bob)
            let accepted = Locked<[MessageID]>([])
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for index in 0..<1000 {
                        let sent = try await h.send("n\(index)", from: alice)
                        accepted.withLock { $0.append(sent.messageID) }
                        if index % 50 == 0 { await Task.yield() }
                    }
                }
                group.addTask { await h.service.reconnected(bob) }
                try await group.waitForAll()
            }
            // Messages sent after the drain went live arrive live; give their confirmations a moment.
            await eventually("bob has 2,000 messages", timeout: .seconds(30)) {
                Set(h.transport.receivedMessages(of: bob).map(\.message.id)).count == 2000
            }
            let received = h.transport.receivedMessages(of: bob).map(\.message)
            let distinct = received.reduce(into: [MessageID]()) { ids, message in
                if ids.last != message.id, !ids.contains(message.id) { ids.append(message.id) }
            }
            #expect(distinct.count == 2000)
            #expect(received.count == 2000, "no duplicates in this run")
            #expect(distinct == distinct.sorted(), "acceptance order is id order")
            #expect(received.prefix(1000).map(\.content) == (0..<1000).map { "q\($0)" })
            #expect(received.suffix(1000).map(\.id) == accepted.value)
            #expect(try await h.depth(of: Harness.bob) == 0, "nothing stranded in the queue")
            let drainedNew = h.transport.receivedMessages(of: bob).filter { $0.message.content.hasPrefix("n") && !$0.isNew }
            #expect(!drainedNew.isEmpty, "some new messages were routed during the drain, so the race took place")
            print("race: \(drainedNew.count) of the new messages were drained, the rest arrived live")
        }
    }

    @Test("A message sent while the recipient is connected but not yet drained goes behind the queued ones")
    func noOvertakingBeforeDrain() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            try await h.send("queued 1", from: alice)
            try await h.send("queued 2", from: alice)
            let bob = await h.connect(Harness.bob)
            try await h.send("new", from: alice)
            #expect(h.contents(of: bob).isEmpty, "the new message does not overtake the backlog")
            #expect(try await h.depth(of: Harness.bob) == 3)

            #expect(await h.service.reconnected(bob) == 3)
            #expect(h.contents(of: bob) == ["queued 1", "queued 2", "new"])
            try await h.send("live", from: alice)
            #expect(h.contents(of: bob).last == "live")
            #expect(h.transport.receivedMessages(of: bob).last?.isNew == true)
        }
    }

    @Test("A recipient with no backlog is live from the first connection")
    func liveWithoutBacklog() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            let sent = try await h.send("hi", from: alice)

            #expect(h.contents(of: bob) == ["hi"])
            #expect(h.transport.receivedMessages(of: bob).first?.isNew == true)
            #expect(try await h.depth(of: Harness.bob) == 0)
            try await eventually("the live delivery is recorded") {
                try await h.store.message(sent.messageID)?.isRead(by: Harness.bob.id) == true
            }
            #expect(h.memoryStore!.pendingRecipients(of: sent.messageID).isEmpty)
        }
    }

    @Test("A ghost connection that never acknowledges loses nothing: the message goes to the offline path")
    func ghostConnectionHandsToOfflinePath() async throws {
        var configuration = ChatServiceConfiguration()
        configuration.deliveryConfirmation = .clientAcknowledgement(timeout: .seconds(10))
        // The deadlines run on a test clock: the timeout passes when the test says so, however loaded the machine.
        let deadlines = ManualMonotonicClock()
        try await withHarness(configuration: configuration, deadlines: deadlines) { h in
            let alice = await h.connect(Harness.alice)
            let ghost = await h.connect(Harness.bob) { _ in .ignore }
            try await h.send("one", from: alice)
            try await h.send("two", from: alice)
            #expect(h.contents(of: ghost) == ["one", "two"], "written to the half-open socket")
            deadlines.advance(by: .seconds(9))
            #expect(await h.service.currentStatistics().unconfirmedLive == 0, "not yet: the timeout has not passed")
            deadlines.advance(by: .seconds(2))

            try await eventually("both are queued") { try await h.depth(of: Harness.bob) == 2 }
            #expect(await h.service.currentStatistics().unconfirmedLive == 2)
            try await h.send("three", from: alice)
            #expect(h.contents(of: ghost).count == 2, "no more live pushes to an unconfirmed connection")
            #expect(try await h.depth(of: Harness.bob) == 3)

            await h.drop(ghost)
            let bob = await h.connect(Harness.bob)
            #expect(await h.service.reconnected(bob) == 3)
            #expect(h.contents(of: bob) == ["one", "two", "three"])
        }
    }

    @Test("With socket-write confirmation a client that never acknowledges still counts as delivered")
    func socketWriteConfirmation() async throws {
        var configuration = ChatServiceConfiguration()
        configuration.deliveryConfirmation = .socketWrite
        try await withHarness(configuration: configuration) { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob) { _ in .ignore }
            let sent = try await h.send("no ack needed", from: alice)
            #expect(h.contents(of: bob) == ["no ack needed"])
            try await eventually("delivery recorded") {
                try await h.store.message(sent.messageID)?.isRead(by: Harness.bob.id) == true
            }
            #expect(try await h.depth(of: Harness.bob) == 0)
        }
    }

    @Test("Every connection of a recipient gets a live message")
    func everyConnectionReceives() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            let phone = await h.connect(Harness.bob)
            let laptop = await h.connect(Harness.bob)
            let lookupsBefore = h.memoryPresence!.lookupCount
            try await h.send("to both", in: Harness.groupChat, from: alice)
            #expect(h.contents(of: phone) == ["to both"])
            #expect(h.contents(of: laptop) == ["to both"])
            #expect(h.memoryPresence!.lookupCount == lookupsBefore + 1, "one batched presence lookup for all recipients")

            await h.drop(phone)
            try await h.send("laptop only", from: alice)
            #expect(h.contents(of: laptop).last == "laptop only")
            #expect(try await h.depth(of: Harness.bob) == 0)
        }
    }

    @Test("A full queue refuses the entry, keeps what it has, and the message is caught up from the store")
    func fullQueueLosesNothing() async throws {
        var queueConfiguration = InMemoryMessageQueue.Configuration()
        queueConfiguration.maxLength = 2
        try await withHarness(queueConfiguration: queueConfiguration) { h in
            let alice = await h.connect(Harness.alice)
            for index in 1...3 { try await h.send("m\(index)", from: alice) }
            #expect(try await h.depth(of: Harness.bob) == 2)
            #expect(await h.service.currentStatistics().queueRejected == 1)
            #expect(h.memoryQueue!.deadLettered.map(\.reason) == [.rejected])
            #expect(h.logs.contains("Offline queue full; messages stay pending in the store until the user reconnects"))

            let bob = await h.connect(Harness.bob)
            #expect(await h.service.reconnected(bob) == 3)
            #expect(h.contents(of: bob) == ["m1", "m2", "m3"])
        }
    }

    @Test("Presence store down: delivery goes on from local state, logged once; connections re-registered after")
    func presenceOutage() async throws {
        var configuration = ChatServiceConfiguration()
        configuration.presenceHeartbeatInterval = .milliseconds(10)
        try await withHarness(configuration: configuration) { h in
            h.memoryPresence!.setAvailable(false)
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            try await h.send("one", from: alice)
            try await h.send("two", from: alice)
            #expect(h.contents(of: bob) == ["one", "two"])
            #expect(h.logs.count(of: "Presence store unreachable; continuing with this node's own presence") == 1)
            #expect(await h.service.health().presence == .degraded)

            h.memoryPresence!.setAvailable(true)
            try await eventually("both users are registered again") {
                let online = try await h.presence.lookup([Harness.alice.id, Harness.bob.id])
                return online[Harness.alice.id]?.count == 1 && online[Harness.bob.id]?.count == 1
            }
            #expect(await h.service.health().presence == .ok)
        }
    }

    @Test("Presence is broadcast: user:online after a drain, user:offline after the last connection closes")
    func presenceBroadcasts() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            await h.service.reconnected(bob)
            let online = h.transport.events(of: alice).compactMap { event -> UserID? in
                if case .userOnline(let change) = event { change.userID } else { nil }
            }
            #expect(online.contains(Harness.bob.id))
            #expect(!h.transport.events(of: bob).contains { if case .userOnline(let c) = $0 { c.userID == Harness.bob.id } else { false } })

            await h.drop(bob)
            #expect(h.transport.events(of: alice).contains { if case .userOffline(let c) = $0 { c.userID == Harness.bob.id } else { false } })
        }
    }
}

@Suite("Drain pipeline")
struct DrainPipelineTests {
    @Test("A drain keeps drainWindow messages in flight and batches its readBy writes")
    func pipelinedDrain() async throws {
        var configuration = ChatServiceConfiguration()
        configuration.drainWindow = 8
        configuration.deliveryConfirmation = .clientAcknowledgement(timeout: .seconds(30))
        try await withHarness(configuration: configuration) { h in
            let alice = await h.connect(Harness.alice)
            var sent: [MessageID] = []
            for index in 0..<40 { sent.append(try await h.send("m\(index)", from: alice).messageID) }
            let bob = await h.connect(Harness.bob) { _ in .ignore }
            let writesBefore = h.memoryStore!.deliveryWriteCount

            async let drained = h.service.reconnected(bob)
            var rounds = 0
            while h.transport.receivedMessages(of: bob).count < 40 {
                await eventually("a full window is in flight") { h.transport.ignoredCount(on: bob) == 8 }
                #expect(h.transport.receivedMessages(of: bob).count == 8 * (rounds + 1), "window \(rounds)")
                rounds += 1
                h.transport.acknowledgeIgnored(on: bob)
            }
            h.transport.acknowledgeIgnored(on: bob)
            #expect(await drained == 40)
            #expect(rounds == 5)
            let last = try #require(sent.last)
            await eventually("every delivery is recorded") { h.memoryStore!.pendingRecipients(of: last).isEmpty }
            let writes = h.memoryStore!.deliveryWriteCount - writesBefore
            #expect(writes < 40, "readBy writes are batched (\(writes) writes for 40 deliveries)")
        }
    }

    @Test("The queue failing mid-drain: what was not acknowledged is caught up from the store, once each")
    func queueFailsMidDrain() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            for index in 1...6 { try await h.send("m\(index)", from: alice) }
            let emitted = Locked(0)
            let queue = try #require(h.memoryQueue)
            let bob = await h.connect(Harness.bob) { event in
                guard case .messageReceived = event else { return .acknowledge }
                if emitted.withLock({ count in count += 1; return count }) == 3 { queue.setAvailable(false) }
                return .acknowledge
            }
            let delivered = await h.service.reconnected(bob)
            let contents = h.contents(of: bob)
            #expect(Set(contents) == Set((1...6).map { "m\($0)" }), "every message arrived")
            #expect(contents == contents.sorted(), "in order")
            #expect(delivered == 6)
            #expect(h.logs.count(of: "Offline queue unreachable; offline messaging disabled") == 1)
        }
    }

    @Test("Sending sets the chat's lastMessage")
    func lastMessage() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            let sent = try await h.send("latest", from: alice)
            #expect(try await h.store.chat(Harness.directChat)?.lastMessage == sent.messageID)
        }
    }
}

@Suite("Delivery events")
struct DeliveryEventTests {
    @Test("Every status change becomes a delivery event: sent, delivered, expired")
    func events() async throws {
        try await withHarness { h in
            let queue = try #require(h.memoryQueue)
            let alice = await h.connect(Harness.alice)
            let old = try await h.send("expires", from: alice)
            h.clock.advance(by: 24 * 60 * 60 + 1)
            let kept = try await h.send("arrives", from: alice)
            let bob = await h.connect(Harness.bob)
            await h.service.reconnected(bob)
            await eventually("all four events are published") { queue.deliveryEvents.count == 4 }
            let events = Set(queue.deliveryEvents.map { "\($0.messageID)|\($0.userID)|\($0.status)" })
            #expect(events == [
                "\(old.messageID)|bob|sent", "\(old.messageID)|bob|expired",
                "\(kept.messageID)|bob|sent", "\(kept.messageID)|bob|delivered",
            ])
        }
    }
}
