import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// What one user can make the engine hold or send: rate limits, fan-out, queue bounds, block lists.
@Suite("Quotas and privacy")
struct QuotaTests {
    @Test("A token bucket allows its burst, then its rate, and says how long to wait")
    func tokenBucket() {
        var bucket = TokenBucket(limit: RateLimit(rate: 2, burst: 3), now: 0)
        #expect(bucket.take(now: 0) == nil)
        #expect(bucket.take(now: 0) == nil)
        #expect(bucket.take(now: 0) == nil)
        #expect(bucket.take(now: 0) == 0.5, "one token refills in half a second")
        #expect(bucket.take(now: 0.5) == nil)
        #expect(bucket.take(now: 0.4) != nil, "time going backwards refills nothing")
        // A cost above the burst passes once the bucket is full, so a large chat is slowed, not shut out.
        #expect(bucket.take(10, now: 100) == nil)
        #expect(bucket.take(1, now: 100) == 0.5)

        var limiter = KeyedRateLimiter<String>(limit: RateLimit(rate: 1, burst: 1))
        for key in 0..<5_000 { _ = limiter.take("k\(key)", now: Double(key)) }
        #expect(limiter.trackedKeys < 2_100, "refilled buckets are forgotten: \(limiter.trackedKeys)")
    }

    @Test("Sending faster than the limit gets rate_limited with retryAfterMs; waiting lets the next one through")
    func sendRateLimit() async throws {
        var configuration = ChatServiceConfiguration()
        configuration.sendRateLimit = RateLimit(rate: 1, burst: 3)
        try await withHarness(configuration: configuration) { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            for index in 1...3 { try await h.send("m\(index)", from: alice) }
            let refused = await h.service.send(SendMessageRequest(chatID: Harness.directChat, content: "too fast"), from: alice)
            guard case .failure(let error) = refused else {
                Issue.record("the fourth send was accepted")
                return
            }
            #expect(error.code == .rateLimited)
            #expect(error.retryAfter == .milliseconds(1000))
            #expect(error.isRetriable)
            let payload = try #require(h.transport.events(of: alice).compactMap { event -> MessageErrorPayload? in
                if case .messageError(let payload) = event { payload } else { nil }
            }.last)
            #expect(payload.code == "rate_limited")
            #expect(payload.retryAfterMs == 1000)
            #expect(h.contents(of: bob) == ["m1", "m2", "m3"])
            h.clock.advance(by: 1)
            try await h.send("after waiting", from: alice)
            #expect(await h.service.currentStatistics().rateLimitedSends == 1)
            // Other users have their own budget.
            try await h.send("bob's own", from: bob)
        }
    }

    @Test("One user in a chat of 1,000 made-up participants cannot fill memory: fan-out is limited")
    func fanOutLimit() async throws {
        var configuration = ChatServiceConfiguration()
        configuration.fanOutRateLimit = RateLimit(rate: 2_000, burst: 10_000)
        try await withHarness(configuration: configuration) { h in
            let crowd: [UserID] = [Harness.alice.id] + (1...999).map { UserID("made-up-\($0)") }
            try await h.store.saveChat(Chat(id: "crowd", participants: crowd))
            let alice = await h.connect(Harness.alice)
            var accepted = 0
            var limited = 0
            for index in 0..<2_000 {
                let result = await h.service.send(SendMessageRequest(chatID: "crowd", content: "spam \(index)"), from: alice)
                switch result {
                case .success: accepted += 1
                case .failure(let error) where error.code == .rateLimited: limited += 1
                case .failure(let error): Issue.record("unexpected \(error)")
                }
            }
            // 10,000 deliveries of burst at 999 each: ten messages, then nothing until time passes.
            #expect(accepted == 10)
            #expect(limited == 1_990)
            #expect(h.memoryStore!.messageCount == 10)
            await eventually("the ten messages are queued") { h.memoryQueue!.totalEntries == 9_990 }
            h.clock.advance(by: 1)
            try await h.send("two more deliveries' worth", in: "crowd", from: alice)
            // The limited sends were counted, not logged one by one at info.
            #expect(h.logs.all.count { $0.message == "Message rejected" && $0.level >= .info } == 0)
        }
    }

    @Test("The in-memory queue holds at most maxTotalEntries over all recipients; the rest are refused like a full queue")
    func queueTotalBound() async throws {
        var queueConfiguration = InMemoryMessageQueue.Configuration()
        queueConfiguration.maxTotalEntries = 100
        let clock = ManualWallClock()
        let queue = InMemoryMessageQueue(configuration: queueConfiguration, clock: clock)
        var rejected = 0
        for user in 0..<3 {
            let entries = (0..<50).map { index in
                QueueEntry(
                    message: Message(id: MessageIDGenerator(clock: clock).next(), chatID: "c", senderID: "s", content: "\(index)", createdAt: clock.now()),
                    sender: User(id: "s", username: "s"),
                    recipient: UserID("r\(user)"),
                    enqueuedAt: clock.now()
                )
            }
            rejected += try await queue.enqueue(entries, for: UserID("r\(user)")).count
        }
        #expect(rejected == 50)
        #expect(queue.totalEntries == 100)
        #expect(queue.deadLettered.count == 50)
        #expect(queue.deadLettered.allSatisfy { $0.reason == .rejected })
        // Expired entries of queues nobody drains make room again.
        clock.advance(by: queueConfiguration.messageTTL + 1)
        let late = QueueEntry(
            message: Message(id: MessageIDGenerator(clock: clock).next(), chatID: "c", senderID: "s", content: "late", createdAt: clock.now()),
            sender: User(id: "s", username: "s"),
            recipient: "r9",
            enqueuedAt: clock.now()
        )
        #expect(try await queue.enqueue([late], for: "r9").isEmpty)
        #expect(queue.totalEntries == 1)
    }

    @Test("A blocked sender is refused in a direct chat and skipped in a group; presence is not shared with them")
    func blocks() async throws {
        try await withHarness { h in
            try await h.store.setBlocked(Harness.alice.id, by: Harness.bob.id, blocked: true)
            let alice = await h.connect(Harness.alice)
            let carol = await h.connect(Harness.carol)
            let bob = await h.connect(Harness.bob)
            let direct = await h.service.send(SendMessageRequest(chatID: Harness.directChat, content: "hi bob"), from: alice)
            guard case .failure(let error) = direct else {
                Issue.record("a blocked sender's direct message was accepted")
                return
            }
            #expect(error.code == .blocked)
            let group = try await h.send("hi all", in: Harness.groupChat, from: alice)
            #expect(h.contents(of: carol) == ["hi all"])
            #expect(h.contents(of: bob).isEmpty)
            await eventually("only dave (offline) is pending; bob is not") {
                h.memoryStore!.pendingRecipients(of: group.messageID) == [Harness.dave.id]
            }
            // bob came online after alice: carol saw it, alice (blocked) did not.
            let online: (ConnectionID) -> Bool = { connection in
                h.transport.events(of: connection).contains { if case .userOnline(let change) = $0 { change.userID == Harness.bob.id } else { false } }
            }
            #expect(online(carol))
            #expect(!online(alice))
            // Unblocked: delivered again.
            try await h.store.setBlocked(Harness.alice.id, by: Harness.bob.id, blocked: false)
            try await h.send("hi again", from: alice)
            #expect(h.contents(of: bob) == ["hi again"])
            #expect(try await h.store.blockedUsers(of: Harness.bob.id).isEmpty)
        }
    }

    @Test("An invited participant gets none of a chat's messages and shares no presence through it until they accept")
    func invitations() async throws {
        try await withHarness { h in
            let eve = User(id: "eve", username: "Eve")
            try await h.store.saveChat(Chat(id: "invite", participants: [Harness.alice.id, eve.id], invited: [eve.id]))
            let alice = await h.connect(Harness.alice)
            let sawEve: () -> Bool = {
                h.transport.events(of: alice).contains { if case .userOnline(let change) = $0 { change.userID == eve.id } else { false } }
            }
            var eveConnection = await h.connect(eve)
            #expect(!sawEve(), "eve has not accepted: her presence is not shared")
            try await h.send("before", in: "invite", from: alice)
            #expect(h.contents(of: eveConnection).isEmpty)
            #expect(try await h.depth(of: eve) == 0)
            let early = await h.service.send(SendMessageRequest(chatID: "invite", content: "hi"), from: eveConnection)
            #expect((try? early.get()) == nil, "eve must accept before posting")

            try await h.store.saveChat(Chat(id: "invite", participants: [Harness.alice.id, eve.id]))
            await h.drop(eveConnection)
            eveConnection = await h.connect(eve)
            #expect(sawEve())
            try await h.send("after", in: "invite", from: alice)
            #expect(h.contents(of: eveConnection) == ["after"])
        }
    }
}
