@testable import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// Two engines (nodes) sharing one store, offline queue, presence store and node relay, as several chatd processes
/// share MongoDB, RabbitMQ and Redis.
@Suite("Several nodes")
struct SeveralNodesTests {
    /// The shared services of a small cluster.
    struct Shared {
        let clock = ManualWallClock()
        let store = InMemoryMessageStore()
        let relay = InMemoryNodeRelay()
        let queue: InMemoryMessageQueue
        let presence: InMemoryPresenceStore

        init() {
            self.queue = InMemoryMessageQueue(clock: self.clock)
            self.presence = InMemoryPresenceStore(clock: self.clock)
        }
    }

    /// Runs `body` with nodes `node-1` and `node-2` running on `shared`.
    private func withTwoNodes(
        _ shared: Shared = Shared(),
        relay: Bool = true,
        _ body: @Sendable (Harness, Harness) async throws -> Void
    ) async throws {
        @Sendable func configuration(_ node: NodeID) -> ChatServiceConfiguration {
            var configuration = ChatServiceConfiguration()
            configuration.nodeID = node
            return configuration
        }
        let relay = relay ? shared.relay : nil
        try await withHarness(configuration: configuration("node-1"), clock: shared.clock, presence: shared.presence, store: shared.store, queue: shared.queue, relay: relay) { one in
            try await withHarness(configuration: configuration("node-2"), clock: shared.clock, presence: shared.presence, store: shared.store, queue: shared.queue, relay: relay) { two in
                if relay != nil {
                    // The engines start reading their inboxes as they start running.
                    await eventually("both nodes to read their inboxes") { shared.relay.hasInbox("node-1") && shared.relay.hasInbox("node-2") }
                }
                try await body(one, two)
            }
        }
    }

    /// Connects `user` to `node` and catches them up, as a client does on connect; they are live afterwards.
    private func connectLive(_ user: User, to node: Harness) async -> ConnectionID {
        let connection = await node.connect(user)
        _ = await node.service.reconnected(connection)
        return connection
    }

    @Test("A recipient connected to another node gets each message live, in order, and it is recorded delivered")
    func liveAcrossNodes() async throws {
        let shared = Shared()
        try await self.withTwoNodes(shared) { one, two in
            let alice = await self.connectLive(Harness.alice, to: one)
            let bob = await self.connectLive(Harness.bob, to: two)
            var ids: [MessageID] = []
            for index in 0..<30 { ids.append(try await one.send("m\(index)", from: alice).messageID) }
            await eventually("bob to receive all 30 on node 2") { two.contents(of: bob).count == 30 }
            #expect(two.contents(of: bob) == (0..<30).map { "m\($0)" }, "in acceptance order")
            #expect(two.transport.receivedMessages(of: bob).allSatisfy { $0.isNew }, "live, not caught up")
            #expect(try await one.depth(of: Harness.bob) == 0, "nothing went to bob's offline queue")
            #expect(await one.service.currentStatistics().forwarded == 30)
            #expect(await two.service.currentStatistics().relayedIn == 30)
            let sent = ids
            try await eventually("bob's deliveries to be recorded in the store") {
                try await sent.asyncAllSatisfy { try await one.pendingRecipients(of: $0).isEmpty }
            }
            #expect(one.logs.contains("Message forwarded to the recipient's node"))
        }
    }

    @Test("Read marks and typing reach a participant connected to another node")
    func readAndTypingAcrossNodes() async throws {
        try await self.withTwoNodes { one, two in
            let alice = await self.connectLive(Harness.alice, to: one)
            let bob = await self.connectLive(Harness.bob, to: two)
            let sent = try await one.send("read me", from: alice)
            await eventually("bob to receive it on node 2") { two.contents(of: bob) == ["read me"] }
            let mark = try await two.service.markRead(Harness.directChat, upTo: sent.messageID, from: bob)
            await eventually("alice on node 1 to get bob's read mark") {
                one.transport.events(of: alice).contains(.messageRead(mark))
            }
            #expect(await two.service.typing(Harness.directChat, typing: true, from: bob) == nil)
            let typing = TypingChange(chatID: Harness.directChat, userID: Harness.bob.id, typing: true)
            await eventually("alice on node 1 to see bob typing") { one.transport.events(of: alice).contains(.typing(typing)) }
        }
    }

    @Test("A group chat across nodes: a local recipient, a remote one and an offline one each get the message their way")
    func groupAcrossNodes() async throws {
        try await self.withTwoNodes { one, two in
            let alice = await self.connectLive(Harness.alice, to: one)
            let carol = await self.connectLive(Harness.carol, to: one)
            let bob = await self.connectLive(Harness.bob, to: two)
            try await one.send("to everyone", in: Harness.groupChat, from: alice)
            await eventually("carol (same node) and bob (other node) to receive it live") {
                one.contents(of: carol) == ["to everyone"] && two.contents(of: bob) == ["to everyone"]
            }
            // dave is offline everywhere: queued, and caught up when he comes back, on either node.
            #expect(try await one.depth(of: Harness.dave) == 1)
            let dave = await two.connect(Harness.dave)
            #expect(await two.service.reconnected(dave) == 1)
            #expect(two.transport.receivedMessages(of: dave).map(\.isNew) == [false])
        }
    }

    @Test("A user connected to both nodes gets each message on both connections, in order; delivery is recorded once")
    func twoDevicesOnTwoNodes() async throws {
        try await self.withTwoNodes { one, two in
            let alice = await self.connectLive(Harness.alice, to: one)
            let phone = await self.connectLive(Harness.bob, to: one)
            let laptop = await self.connectLive(Harness.bob, to: two)
            var ids: [MessageID] = []
            for index in 0..<10 { ids.append(try await one.send("m\(index)", from: alice).messageID) }
            let expected = (0..<10).map { "m\($0)" }
            await eventually("both of bob's connections to have all 10") {
                one.contents(of: phone).count == 10 && two.contents(of: laptop).count == 10
            }
            #expect(one.contents(of: phone) == expected && two.contents(of: laptop) == expected)
            #expect(two.transport.receivedMessages(of: laptop).allSatisfy { $0.isNew })
            // And from the other side: alice's message sent on node 2 reaches bob's connection on node 1 too.
            let carol = await self.connectLive(Harness.carol, to: two)
            try await two.send("from node 2", in: Harness.groupChat, from: carol)
            await eventually("both of bob's connections to get carol's message") {
                one.contents(of: phone).last == "from node 2" && two.contents(of: laptop).last == "from node 2"
            }
            // Recorded once per user: bob appears once in each message's readBy.
            let sent = ids
            try await eventually("bob's deliveries to be recorded") {
                try await sent.asyncAllSatisfy { try await one.pendingRecipients(of: $0).isEmpty }
            }
            for id in ids {
                let stored = try #require(try await one.store.message(id))
                #expect(stored.readBy.filter { $0.userID == Harness.bob.id }.count == 1)
            }
        }
    }

    @Test("Presence across nodes: contacts on another node see user:online and user:offline, for the first and the last connection anywhere")
    func presenceAcrossNodes() async throws {
        try await self.withTwoNodes { one, two in
            let alice = await self.connectLive(Harness.alice, to: one)
            @Sendable func events(_ name: String) -> [UserID] {
                one.transport.events(of: alice).compactMap { event in
                    switch event {
                    case .userOnline(let change) where name == "online": change.userID
                    case .userOffline(let change) where name == "offline": change.userID
                    default: nil
                    }
                }
            }
            // Plain connects: `user:reconnected` announces the user once more, by design (the product's flow).
            let laptop = await two.connect(Harness.bob)
            await eventually("alice (node 1) to see bob come online on node 2") { events("online") == [Harness.bob.id] }
            // A second device on alice's node: bob was online already.
            let phone = await one.connect(Harness.bob)
            await two.drop(laptop)
            try await Task.sleep(for: .milliseconds(50))
            #expect(events("online") == [Harness.bob.id], "no second user:online")
            #expect(events("offline").isEmpty, "bob is still connected on node 1")
            await one.drop(phone)
            await eventually("alice to see bob go offline with his last connection") { events("offline") == [Harness.bob.id] }
        }
    }

    @Test("Presence names a node whose inbox is gone: the message goes to the offline queue and is caught up")
    func nodeWithoutInbox() async throws {
        let shared = Shared()
        try await self.withTwoNodes(shared) { one, _ in
            // bob is registered on node-3, which heartbeats but reads no inbox (it crashed after registering).
            try await shared.presence.register(PresenceRecord(userID: Harness.bob.id, connectionID: "bob-on-3", nodeID: "node-3", since: shared.clock.now()))
            try await shared.presence.heartbeat(node: "node-3")
            let alice = await self.connectLive(Harness.alice, to: one)
            try await one.send("where are you", from: alice)
            #expect(try await one.depth(of: Harness.bob) == 1, "queued instead")
            #expect(await one.service.currentStatistics().forwarded == 0)
            #expect(one.logs.contains("The recipient's node did not take the messages (no inbox, or a full one)"))
            let bob = await one.connect(Harness.bob)
            #expect(await one.service.reconnected(bob) == 1)
            #expect(one.contents(of: bob) == ["where are you"])
        }
    }

    @Test("Without a relay, a recipient on another node is queued (a single node's behaviour)")
    func withoutRelay() async throws {
        try await self.withTwoNodes(relay: false) { one, two in
            let alice = await self.connectLive(Harness.alice, to: one)
            let bob = await self.connectLive(Harness.bob, to: two)
            try await one.send("hello", from: alice)
            #expect(try await one.depth(of: Harness.bob) == 1)
            #expect(two.contents(of: bob).isEmpty)
        }
    }

    @Test("A forwarded message the remote client does not confirm goes to the offline queue there, not back")
    func unconfirmedOnTheOtherNode() async throws {
        let shared = Shared()
        try await self.withTwoNodes(shared) { one, two in
            let alice = await self.connectLive(Harness.alice, to: one)
            let bob = await two.connect(Harness.bob)
            _ = await two.service.reconnected(bob)
            // bob's client now fails every write: the live push is unconfirmed.
            two.transport.setBehavior(of: bob) { event in
                if case .messageReceived = event { return .failWrite }
                return .acknowledge
            }
            try await one.send("lost in transit", from: alice)
            try await eventually("the message to land in bob's offline queue") { try await two.depth(of: Harness.bob) == 1 }
            #expect(await one.service.currentStatistics().forwarded == 1)
            #expect(shared.relay.forwardedCount == 1, "forwarded once, never back")
            // bob reconnects (on node 1 this time) and catches it up.
            await two.drop(bob)
            let again = await one.connect(Harness.bob)
            #expect(await one.service.reconnected(again) == 1)
            #expect(one.contents(of: again) == ["lost in transit"])
        }
    }

    @Test("A node dies: a live node moves what waited in its inbox on, deletes the inbox and announces its users offline; nothing is lost")
    func deadNodeIsCleanedUp() async throws {
        let shared = Shared()
        let presence = shared.presence
        // The janitor's round is run by hand below, once node 2 has expired on the manual clock and the live
        // nodes have heartbeated (on real time a loaded machine can delay a live node's heartbeat past a short TTL).
        @Sendable func configuration(_ node: NodeID) -> ChatServiceConfiguration {
            var configuration = ChatServiceConfiguration()
            configuration.nodeID = node
            configuration.janitorInterval = .seconds(3600)
            return configuration
        }
        @Sendable func node(_ id: NodeID, _ body: @Sendable (Harness) async throws -> Void) async throws {
            try await withHarness(configuration: configuration(id), clock: shared.clock, presence: presence, store: shared.store, queue: shared.queue, relay: shared.relay, body)
        }
        try await node("node-1") { one in
            try await node("node-3") { three in
                let alice = await self.connectLive(Harness.alice, to: one)
                let carol = await self.connectLive(Harness.carol, to: three)
                // node-2 holds bob, takes two messages live, then dies (no disconnect, no unregistering) with three
                // more forwarded to its inbox before its heartbeat expires.
                let stop = AsyncStream<Void>.makeStream()
                let bobOnTwo = Locked<[String]>([])
                let two = Task {
                    try await node("node-2") { two in
                        await eventually("node 2 to read its inbox") { shared.relay.hasInbox("node-2") }
                        let bob = await self.connectLive(Harness.bob, to: two)
                        let before = [try await one.send("before 1", from: alice).messageID, try await one.send("before 2", from: alice).messageID]
                        await eventually("bob to get both live on node 2") { two.contents(of: bob).count == 2 }
                        try await eventually("bob's deliveries to be recorded") {
                            try await before.asyncAllSatisfy { try await one.pendingRecipients(of: $0).isEmpty }
                        }
                        bobOnTwo.withLock { $0 = two.contents(of: bob) }
                        for await _ in stop.stream {}
                    }
                }
                // node 2's task runs several waits of its own first (each bounded): this one only waits for them.
                await eventually("node 2 to hold bob", timeout: .seconds(60)) { bobOnTwo.value.count == 2 }
                stop.continuation.finish()
                try await two.value
                #expect(!shared.relay.hasInbox("node-2") && shared.relay.inboxExists("node-2"), "the inbox outlives its reader")
                var sent: [MessageID] = []
                for index in 1...3 { sent.append(try await one.send("after \(index)", from: alice).messageID) }
                #expect(shared.relay.pendingCount(of: "node-2") == 3, "forwarded to the dead node's inbox: presence does not know yet")

                // node 2's heartbeat expires (30 s TTL); nodes 1 and 3 heartbeat; node 3's janitor runs its round.
                shared.clock.advance(by: 31)
                try await presence.heartbeat(node: "node-1")
                try await presence.heartbeat(node: "node-3")
                await three.service.cleanUpExpiredNodes()
                await one.service.cleanUpExpiredNodes()
                #expect(!shared.relay.inboxExists("node-2"), "the dead inbox is gone")
                try await eventually("the three to wait in bob's offline queue") { try await one.depth(of: Harness.bob) == 3 }
                await eventually("carol (node 3) to see bob go offline") {
                    three.transport.events(of: carol).contains { if case .userOffline(let change) = $0 { change.userID == Harness.bob.id } else { false } }
                }
                let moved = await one.service.currentStatistics().janitorMoved + three.service.currentStatistics().janitorMoved
                let cleanedUp = await one.service.currentStatistics().nodesCleanedUp + three.service.currentStatistics().nodesCleanedUp
                #expect(moved == 3 && cleanedUp == 1, "one janitor moved the three, once (node 1 found nothing left)")
                #expect(try await presence.lookup([Harness.bob.id])[Harness.bob.id] == [])
                #expect(try await presence.claimExpiredNodes(for: "node-9", lease: .seconds(1)).isEmpty, "node 2 is forgotten")

                // bob comes back on node 3 and gets the three, once each, in order.
                let bob = await three.connect(Harness.bob)
                #expect(await three.service.reconnected(bob) == 3)
                #expect(three.contents(of: bob) == ["after 1", "after 2", "after 3"])
                let ids = sent
                try await eventually("the three to be recorded delivered") {
                    try await ids.asyncAllSatisfy { try await one.pendingRecipients(of: $0).isEmpty }
                }
            }
        }
    }

    @Test("A dead node's inbox is moved to the node its recipient is on now, live")
    func deadNodesInboxFollowsTheRecipient() async throws {
        let shared = Shared()
        try await self.withTwoNodes(shared) { one, two in
            // node-3 read its inbox once and died with bob registered there.
            let reader = Task { try await shared.relay.receive(for: "node-3") { _ in } }
            await eventually("node 3's inbox to exist") { shared.relay.hasInbox("node-3") }
            reader.cancel()
            await eventually("node 3 to stop reading") { !shared.relay.hasInbox("node-3") }
            let alice = await self.connectLive(Harness.alice, to: one)
            try await shared.presence.register(PresenceRecord(userID: Harness.bob.id, connectionID: "bob-on-3", nodeID: "node-3", since: shared.clock.now()))
            // alice's two messages follow presence to node 3's inbox, where nobody reads them.
            try await one.send("one", from: alice)
            try await one.send("two", from: alice)
            #expect(shared.relay.pendingCount(of: "node-3") == 2)
            // bob is back, on node 2: he catches them up from the store.
            let bob = await self.connectLive(Harness.bob, to: two)
            #expect(two.contents(of: bob) == ["one", "two"])
            // node-3 expires (30 s TTL on the manual clock); the live nodes heartbeat on their own schedule, so
            // the janitor runs here by hand.
            shared.clock.advance(by: 31)
            try await shared.presence.heartbeat(node: "node-1")
            try await shared.presence.heartbeat(node: "node-2")
            let forwardedBefore = await one.service.currentStatistics().forwarded
            await one.service.cleanUpExpiredNodes()
            await eventually("bob to get the moved entries live on node 2") { two.contents(of: bob).count == 4 }
            #expect(two.contents(of: bob) == ["one", "two", "one", "two"], "at least once: the same messages again")
            #expect(two.transport.receivedMessages(of: bob).suffix(2).allSatisfy { $0.isNew })
            #expect(!shared.relay.inboxExists("node-3"))
            #expect(await one.service.currentStatistics().janitorMoved == 2)
            #expect(await one.service.currentStatistics().forwarded == forwardedBefore + 2, "node 1 forwarded them to bob's node")
        }
    }
}

extension Sequence where Element: Sendable {
    fileprivate func asyncAllSatisfy(_ predicate: (Element) async throws -> Bool) async rethrows -> Bool {
        for element in self where !(try await predicate(element)) { return false }
        return true
    }
}
