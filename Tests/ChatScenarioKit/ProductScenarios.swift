public import ChatDomain
import Foundation
public import Testing

/// Creates the presence store a scenario runs against; nil means the in-memory one.
public typealias PresenceFactory = @Sendable () async throws -> (any PresenceStore)?
/// Creates the message store a scenario runs against; nil means the in-memory one.
public typealias StoreFactory = @Sendable () async throws -> (any MessageStore)?
/// Creates the offline queue a scenario runs against; nil means the in-memory one.
public typealias QueueFactory = @Sendable () async throws -> (any MessageQueue)?

/// The rows of the product guide's test table and its manual test scenario, written once and run against every
/// adapter that can stand in for an in-memory one.
public struct ProductScenario: Sendable, CustomTestStringConvertible {
    /// What the scenario shows.
    public let name: String
    /// Whether the scenario switches the queue off and on, or moves its clock: only the in-memory queue can.
    public let needsControllableQueue: Bool
    let body: @Sendable (Harness) async throws -> Void

    init(name: String, needsControllableQueue: Bool = false, body: @escaping @Sendable (Harness) async throws -> Void) {
        self.name = name
        self.needsControllableQueue = needsControllableQueue
        self.body = body
    }

    public var testDescription: String { self.name }

    /// Runs the scenario on a fresh, seeded, running engine.
    public func run(
        presence: PresenceFactory = { nil },
        store makeStore: StoreFactory = { nil },
        queue makeQueue: QueueFactory = { nil }
    ) async throws {
        if ProcessInfo.processInfo.environment["CHATD_TEST_LOG"] != nil { print("\n--- \(self.name)") }
        let presenceStore = try await presence()
        let messageStore = try await makeStore()
        let queue = try await makeQueue()
        try await withHarness(presence: presenceStore, store: messageStore, queue: queue) { h in try await self.body(h) }
    }

    /// The scenarios any queue can run.
    public static var portable: [ProductScenario] { Self.all.filter { !$0.needsControllableQueue } }

    /// Every scenario.
    public static let all: [ProductScenario] = [
        ProductScenario(name: "An offline user's message gets a queue entry", body: offlineUserGetsQueueEntry),
        ProductScenario(name: "Reconnecting delivers every queued message, oldest first, with isNew false", body: reconnectDeliversAllQueued),
        ProductScenario(name: "Queue down and user offline: not queued, online users served, offline user caught up from the store", needsControllableQueue: true, body: queueDownOfflineUserCaughtUpFromStore),
        ProductScenario(name: "readBy gains the recipient when a queued message is delivered, once", body: readByGainsRecipient),
        ProductScenario(name: "Entries older than 24 hours are not delivered, and count as expired", needsControllableQueue: true, body: expiredEntriesAreNotDelivered),
        ProductScenario(name: "Several offline recipients in a group each get their own entry", body: groupRecipientsGetOwnEntries),
        ProductScenario(name: "The guide's manual scenario, steps 1 to 10", needsControllableQueue: true, body: manualScenario),
        ProductScenario(name: "A clientMessageId is per sender and chat; reused for other content it is refused", body: idempotencyKeyPerChat),
        ProductScenario(name: "A blocked sender is refused in a direct chat and skipped in a group", body: blockedSender),
        ProductScenario(name: "Read up to the 3rd of 5: one message:read to the sender, readAt on 1 to 3 only, unread counts; an older mark changes nothing", body: readMarks),
    ]

    @Sendable
    private static func readMarks(_ h: Harness) async throws {
        let alice = await h.connect(Harness.alice)
        let aliceTablet = await h.connect(Harness.alice)
        let bob = await h.connect(Harness.bob)
        await h.service.reconnected(bob)
        var sent: [MessageSent] = []
        for index in 1...5 { sent.append(try await h.send("message \(index)", from: alice)) }
        let bobsOwn = try await h.send("bob's own", from: bob)
        h.clock.advance(by: 2)

        let mark = try await h.service.markRead(Harness.directChat, upTo: sent[2].messageID, from: bob)
        #expect(mark.messageID == sent[2].messageID && mark.userID == Harness.bob.id)
        for connection in [alice, aliceTablet] {
            let reads = h.transport.events(of: connection).compactMap { event -> ReadMark? in
                if case .messageRead(let read) = event { read } else { nil }
            }
            #expect(reads == [mark], "each of alice's connections gets the newest mark, once")
        }
        #expect(!h.transport.events(of: bob).contains { $0.name == "message:read" }, "the reader is not told of their own mark")
        for (index, message) in sent.enumerated() {
            let receipt = try #require(try await h.store.receipts(for: message.messageID).first { $0.userID == Harness.bob.id })
            #expect((receipt.readAt != nil) == (index < 3), "message \(index + 1): readAt \(String(describing: receipt.readAt))")
            if index < 3 { #expect(receipt.readAt == mark.readAt) }
        }

        // Reading an older message again changes nothing and answers with the mark in force.
        h.clock.advance(by: 2)
        let again = try await h.service.markRead(Harness.directChat, upTo: sent[1].messageID, from: bob)
        #expect(again == mark)
        #expect(h.transport.events(of: alice).count { $0.name == "message:read" } == 1)

        let states = try await h.service.readState(of: [Harness.directChat], for: Harness.bob.id)
        #expect(states[Harness.directChat] == ChatReadState(unreadCount: 2, readUpTo: [Harness.bob.id: sent[2].messageID]))
        let alicesView = try await h.service.readState(of: [Harness.directChat], for: Harness.alice.id)
        #expect(alicesView[Harness.directChat]?.unreadCount == 1, "bob's own message is the one alice has not read")

        // A later mark covers the rest, at its own time; the earlier ones keep theirs.
        let last = try await h.service.markRead(Harness.directChat, upTo: sent[4].messageID, from: bob)
        let fourth = try await h.store.receipts(for: sent[3].messageID).first { $0.userID == Harness.bob.id }
        #expect(fourth?.readAt == last.readAt && last.readAt > mark.readAt)
        let first = try await h.store.receipts(for: sent[0].messageID).first { $0.userID == Harness.bob.id }
        #expect(first?.readAt == mark.readAt)
        #expect(try await h.service.readState(of: [Harness.directChat], for: Harness.bob.id)[Harness.directChat]?.unreadCount == 0)

        // A message of another chat, and a chat the reader is not in, are refused.
        do {
            _ = try await h.service.markRead(Harness.groupChat, upTo: bobsOwn.messageID, from: bob)
            Issue.record("a message of the direct chat is not in the group")
        } catch {
            #expect(error.code == .messageNotFound)
        }
        let carol = await h.connect(Harness.carol)
        do {
            _ = try await h.service.markRead(Harness.directChat, upTo: sent[0].messageID, from: carol)
            Issue.record("carol is not in the direct chat")
        } catch {
            #expect(error.code == .notAParticipant)
        }
    }

    @Sendable
    private static func blockedSender(_ h: Harness) async throws {
        try await h.store.setBlocked(Harness.alice.id, by: Harness.bob.id, blocked: true)
        try await h.store.setBlocked(Harness.alice.id, by: Harness.bob.id, blocked: true)
        #expect(try await h.store.blockedUsers(of: Harness.bob.id) == [Harness.alice.id])
        #expect(try await h.store.usersBlocking(Harness.alice.id, among: [Harness.bob.id, Harness.carol.id]) == [Harness.bob.id])
        let alice = await h.connect(Harness.alice)
        let bob = await h.connect(Harness.bob)
        let refused = await h.service.send(SendMessageRequest(chatID: Harness.directChat, content: "hi bob"), from: alice)
        #expect((try? refused.get()) == nil)
        try await h.send("hi all", in: Harness.groupChat, from: alice)
        #expect(h.contents(of: bob).isEmpty)
        #expect(try await h.depth(of: Harness.carol) == 1)
        try await h.store.setBlocked(Harness.alice.id, by: Harness.bob.id, blocked: false)
        #expect(try await h.store.blockedUsers(of: Harness.bob.id).isEmpty)
        try await h.send("hi again", from: alice)
        #expect(h.contents(of: bob) == ["hi again"])
        // A user who is not stored yet may block too, and stays readable.
        try await h.store.setBlocked(Harness.alice.id, by: "newcomer", blocked: true)
        #expect(try await h.store.blockedUsers(of: "newcomer") == [Harness.alice.id])
        #expect(try await h.store.users(["newcomer"])["newcomer"].map(\.username) ?? "newcomer" == "newcomer")
    }

    @Sendable
    private static func idempotencyKeyPerChat(_ h: Harness) async throws {
        let alice = await h.connect(Harness.alice)
        let bob = await h.connect(Harness.bob)
        let carol = await h.connect(Harness.carol)
        let inDirect = try await h.send("for bob only", from: alice, clientMessageID: "c-1")
        // The same key in another chat is another message: stored, delivered, with its own id.
        let inGroup = try await h.send("for the group", in: Harness.groupChat, from: alice, clientMessageID: "c-1")
        #expect(inGroup.messageID != inDirect.messageID)
        #expect(inGroup.chatID == Harness.groupChat)
        #expect(try await h.store.message(inGroup.messageID)?.content == "for the group")
        #expect(h.contents(of: carol) == ["for the group"])
        // A true repeat answers with the first message and delivers nothing new.
        let repeated = try await h.send("for bob only", from: alice, clientMessageID: "c-1")
        #expect(repeated.messageID == inDirect.messageID)
        #expect(h.contents(of: bob) == ["for bob only", "for the group"])
        // The same key in the same chat with other content is refused, naming the field; nothing is delivered.
        let reused = await h.service.send(
            SendMessageRequest(chatID: Harness.directChat, content: "something else", clientMessageID: "c-1"),
            from: alice
        )
        guard case .failure(let error) = reused else {
            Issue.record("a reused clientMessageId with other content was accepted: \(reused)")
            return
        }
        #expect(error.code == .badRequest)
        #expect(error.message.contains("clientMessageId"))
        #expect(h.contents(of: bob) == ["for bob only", "for the group"])
        #expect(try await h.store.history(of: Harness.directChat, before: nil, limit: 10).map(\.content) == ["for bob only"])
    }

    @Sendable
    private static func offlineUserGetsQueueEntry(_ h: Harness) async throws {
        let alice = await h.connect(Harness.alice)
        let sent = try await h.send("Hello B!", from: alice)

        #expect(try await h.depth(of: Harness.bob) == 1)
        #expect(try await h.pendingRecipients(of: sent.messageID) == [Harness.bob.id])
        #expect(h.logs.contains("Message queued for offline user", level: .info))
        #expect(h.transport.events(of: alice).contains(.messageSent(sent)))
    }

    @Sendable
    private static func reconnectDeliversAllQueued(_ h: Harness) async throws {
        let alice = await h.connect(Harness.alice)
        for index in 1...5 { try await h.send("m\(index)", from: alice) }
        #expect(try await h.depth(of: Harness.bob) == 5)

        let bob = await h.connect(Harness.bob)
        #expect(h.contents(of: bob).isEmpty, "queued messages wait for user:reconnected")
        let delivered = await h.service.reconnected(bob)

        #expect(delivered == 5)
        #expect(h.contents(of: bob) == ["m1", "m2", "m3", "m4", "m5"])
        #expect(h.transport.receivedMessages(of: bob).allSatisfy { !$0.isNew && $0.sender == Harness.alice })
        #expect(try await h.depth(of: Harness.bob) == 0)
        #expect(h.logs.contains("Delivered 5 queued messages to bob", level: .info))
        let line = try #require(h.logs.all.first { $0.message == "Delivered 5 queued messages to bob" })
        #expect(line.metadata["chat.message.count"] == "5")
        #expect(line.metadata["chat.user.id"] == "bob")
    }

    @Sendable
    private static func queueDownOfflineUserCaughtUpFromStore(_ h: Harness) async throws {
        let alice = await h.connect(Harness.alice)
        let bob = await h.connect(Harness.bob)
        h.memoryQueue!.setAvailable(false)

        let sent = try await h.send("while the broker is down", in: Harness.groupChat, from: alice)
        try await h.send("and again", in: Harness.groupChat, from: alice)

        #expect(h.contents(of: bob) == ["while the broker is down", "and again"])
        #expect(h.transport.receivedMessages(of: bob).allSatisfy { $0.isNew })
        #expect(h.logs.count(of: "Offline queue unreachable; offline messaging disabled") == 1)
        #expect(await h.service.health().queue == .degraded)
        #expect(try await h.pendingRecipients(of: sent.messageID).isSuperset(of: [Harness.carol.id, Harness.dave.id]))

        h.memoryQueue!.setAvailable(true)
        #expect(try await h.depth(of: Harness.carol) == 0, "nothing reached the queue during the outage")
        let carol = await h.connect(Harness.carol)
        #expect(await h.service.reconnected(carol) == 2)
        #expect(h.contents(of: carol) == ["while the broker is down", "and again"])
        #expect(h.transport.receivedMessages(of: carol).allSatisfy { !$0.isNew })
    }

    @Sendable
    private static func readByGainsRecipient(_ h: Harness) async throws {
        let alice = await h.connect(Harness.alice)
        let sent = try await h.send("Hello B!", from: alice)
        let bob = await h.connect(Harness.bob)
        await h.service.reconnected(bob)
        await h.service.reconnected(bob)

        try await eventually("readBy holds bob") {
            try await h.store.message(sent.messageID)?.isRead(by: Harness.bob.id) == true
        }
        let message = try #require(try await h.store.message(sent.messageID))
        #expect(message.readBy.map(\.userID) == [Harness.alice.id, Harness.bob.id])
        #expect(try await h.pendingRecipients(of: sent.messageID).isEmpty)
        let receipts = try await h.store.receipts(for: sent.messageID)
        #expect(receipts.map(\.status) == [.delivered])
    }

    @Sendable
    private static func expiredEntriesAreNotDelivered(_ h: Harness) async throws {
        let alice = await h.connect(Harness.alice)
        let old = try await h.send("yesterday", from: alice)
        h.clock.advance(by: 24 * 60 * 60 + 1)
        try await h.send("today", from: alice)

        let bob = await h.connect(Harness.bob)
        #expect(await h.service.reconnected(bob) == 1)
        #expect(h.contents(of: bob) == ["today"])
        await eventually("the expiry is counted") { await h.service.currentStatistics().expired == 1 }
        try await eventually("the receipt says expired") {
            try await h.store.receipts(for: old.messageID).first?.status == .expired
        }
        #expect(h.memoryQueue!.deadLettered.map(\.reason) == [.expired])
    }

    @Sendable
    private static func groupRecipientsGetOwnEntries(_ h: Harness) async throws {
        let alice = await h.connect(Harness.alice)
        try await h.send("hi all", in: Harness.groupChat, from: alice)

        for user in [Harness.bob, Harness.carol, Harness.dave] {
            #expect(try await h.depth(of: user) == 1, "queue of \(user.id)")
        }
        #expect(try await h.depth(of: Harness.alice) == 0, "the sender gets no entry")
        let carol = await h.connect(Harness.carol)
        await h.service.reconnected(carol)
        #expect(h.contents(of: carol) == ["hi all"])
        #expect(try await h.depth(of: Harness.bob) == 1, "draining carol leaves bob's entry alone")
    }

    @Sendable
    private static func manualScenario(_ h: Harness) async throws {
        // 1. A and B connected.
        let alice = await h.connect(Harness.alice)
        var bob = await h.connect(Harness.bob)
        // 2. B closes the connection.
        await h.drop(bob)
        // 3. A sends.
        let hello = try await h.send("Hello B!", from: alice)
        // 4. The queue holds 1.
        #expect(try await h.depth(of: Harness.bob) == 1)
        // 5. B reconnects and receives it, isNew false, readBy includes B.
        bob = await h.connect(Harness.bob)
        #expect(await h.service.reconnected(bob) == 1)
        let received = try #require(h.transport.receivedMessages(of: bob).first)
        #expect(received.message.id == hello.messageID)
        #expect(received.message.content == "Hello B!")
        #expect(received.isNew == false)
        #expect(received.message.readBy.map(\.userID) == [Harness.alice.id, Harness.bob.id], "the emitted copy lists B already")
        try await eventually("readBy includes B") {
            try await h.store.message(hello.messageID)?.isRead(by: Harness.bob.id) == true
        }
        // 6. The broker stops.
        h.memoryQueue!.setAvailable(false)
        // 7. C is offline, A sends.
        let toCarol = try await h.send("Hello C!", in: Harness.groupChat, from: alice)
        // 8. Online users get it at once; nothing is queued.
        #expect(h.contents(of: bob).last == "Hello C!")
        // 9. The broker restarts.
        h.memoryQueue!.setAvailable(true)
        #expect(try await h.depth(of: Harness.carol) == 0)
        // 10. C reconnects and receives the message.
        let carol = await h.connect(Harness.carol)
        #expect(await h.service.reconnected(carol) == 1)
        let caughtUp = try #require(h.transport.receivedMessages(of: carol).first)
        #expect(caughtUp.message.id == toCarol.messageID)
        #expect(caughtUp.isNew == false)
        #expect(caughtUp.message.isRead(by: Harness.carol.id), "caught up from the store, readBy lists C too")
    }
}
