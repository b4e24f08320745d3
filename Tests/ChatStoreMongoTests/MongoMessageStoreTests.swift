import ChatDomain
import ChatScenarioKit
@testable import ChatStoreMongo
import Foundation
import Testing

/// The MongoDB message store against nx-27017 (or the mongod that `MONGODB_URI` names).
@Suite("MongoDB message store")
struct MongoMessageStoreTests {
    private static let clock = ManualWallClock(start: Date(timeIntervalSince1970: 1_767_693_600.123))

    private static func message(
        _ generator: MessageIDGenerator,
        chat: ChatID = "chat-1",
        content: String = "hello",
        at date: Date = clock.now(),
        clientMessageID: String? = nil
    ) -> Message {
        Message(
            id: generator.next(),
            chatID: chat,
            senderID: "alice",
            content: content,
            readBy: [ReadReceipt(userID: "alice", readAt: date)],
            createdAt: date,
            clientMessageID: clientMessageID
        )
    }

    @Test("Every field of a message survives the round trip, to the millisecond")
    func roundTrip() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            let generator = MessageIDGenerator(clock: Self.clock)
            var message = Self.message(generator, content: "héllo 👋 \"quoted\" \\ back\nslash\t✓")
            message.messageType = .image
            message.attachments = [
                .object(["url": .string("https://example.test/a.png"), "size": .number(1024.5), "tags": .array([.string("x"), .null, .bool(true)])])
            ]
            message.replyTo = generator.next()
            message.clientMessageID = "client-1"
            #expect(try await store.insert(message, pendingFor: ["bob"]) == .inserted)
            let stored = try #require(try await store.message(message.id))
            #expect(stored == message)
            #expect(stored.createdAt.timeIntervalSince1970 == 1_767_693_600.123)
            #expect(try await store.message(generator.next()) == nil)
        }
    }

    @Test("A malformed chat document is a data error for the sender (internal_error), not an outage")
    func dataErrorIsNotAnOutage() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            try await withHarness(store: store) { h in
                _ = try await store.command([
                    "insert": .string("chats"),
                    "documents": .array([.document(["_id": .string("broken"), "participants": .string("not an array")])]),
                ])
                let alice = await h.connect(Harness.alice)
                let result = await h.service.send(SendMessageRequest(chatID: "broken", content: "hi"), from: alice)
                guard case .failure(let error) = result else {
                    Issue.record("a send into a malformed chat was accepted")
                    return
                }
                #expect(error.code == .internalError)
                #expect(await h.service.probe().store == .ok, "the store answered: it is not down")
                #expect(h.logs.contains("Message store call failed", level: .error))
                let line = try #require(h.logs.all.first { $0.message == "Message store call failed" })
                #expect(line.metadata["error"]?.contains("chat broken") == true, "the log names the document: \(line.metadata)")
                try await h.send("the rest works", from: alice)
            }
        }
    }

    @Test("A user's chats are found once the indexes exist (nx-27017 lost them under a single-field array index)")
    func chatsOfUser() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            // The index an older chatd created: it must not hide chats either.
            _ = try await store.command([
                "createIndexes": .string("chats"),
                "indexes": .array([.document(["key": .document(["participants": .int(1)]), "name": .string("participants")])]),
            ])
            try await store.prepare()
            try await store.saveChat(Chat(id: "c-1", participants: ["alice", "bob"], name: "one"))
            try await store.saveChat(Chat(id: "6b0ebf82007f61803d000000", participants: ["alice", "carol"], invited: ["carol"]))
            #expect(try await store.chats(of: "alice").map(\.id) == ["6b0ebf82007f61803d000000", "c-1"])
            #expect(try await store.chats(of: "carol").map(\.invited) == [["carol"]])
            #expect(try await store.chats(of: "bob").map(\.name) == ["one"])
            #expect(try await store.chats(of: "dave").isEmpty)
        }
    }

    @Test("readBy stays free of duplicates under concurrent marks for the same user")
    func concurrentMarks() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore { $0.threads = 4 }
            let generator = MessageIDGenerator(clock: Self.clock)
            let message = Self.message(generator)
            _ = try await store.insert(message, pendingFor: ["bob", "carol"])
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<16 {
                    group.addTask {
                        try await store.markDelivered([DeliveryMark(messageID: message.id, userID: "bob", at: Self.clock.now().addingTimeInterval(Double(index)))])
                    }
                }
                try await group.waitForAll()
            }
            let stored = try #require(try await store.message(message.id))
            #expect(stored.readBy.map(\.userID) == ["alice", "bob"])
            let receipts = try await store.receipts(for: message.id)
            #expect(Set(receipts.map { "\($0.userID)=\($0.status)" }) == ["bob=delivered", "carol=sent"])
        }
    }

    @Test("A second insert with the same sender and clientMessageId returns the first message")
    func idempotentInsert() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            let generator = MessageIDGenerator(clock: Self.clock)
            let first = Self.message(generator, content: "once", clientMessageID: "c-1")
            let again = Self.message(generator, content: "once", clientMessageID: "c-1")
            #expect(try await store.insert(first, pendingFor: ["bob"]) == .inserted)
            #expect(try await store.insert(again, pendingFor: ["bob"]) == .duplicate(first))
            #expect(try await store.message(again.id) == nil)
            // Messages without a client id never collide.
            #expect(try await store.insert(Self.message(generator), pendingFor: []) == .inserted)
            #expect(try await store.insert(Self.message(generator), pendingFor: []) == .inserted)
        }
    }

    @Test("Concurrent inserts (written in shared batches): each stored once, a repeated clientMessageId answered as a duplicate, each chat's lastMessage its newest")
    func concurrentInserts() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            let generator = MessageIDGenerator(clock: Self.clock)
            let chats: [ChatID] = ["chat-a", "chat-b", "chat-c"]
            for chat in chats { try await store.saveChat(Chat(id: chat, participants: ["alice", "bob"])) }
            let messages = (0..<300).map { Self.message(generator, chat: chats[$0 % 3], content: "m\($0)") }
            let twins = (Self.message(generator, chat: "chat-a", content: "twin", clientMessageID: "twin-1"),
                         Self.message(generator, chat: "chat-a", content: "twin", clientMessageID: "twin-1"))
            let (outcomes, twinOutcomes) = try await withThrowingTaskGroup(of: (Int, InsertOutcome).self) { group in
                for (index, message) in messages.enumerated() {
                    group.addTask { (index, try await store.insert(message, pendingFor: ["bob"])) }
                }
                group.addTask { (-1, try await store.insert(twins.0, pendingFor: ["bob"])) }
                group.addTask { (-2, try await store.insert(twins.1, pendingFor: ["bob"])) }
                var outcomes: [Int: InsertOutcome] = [:]
                for try await (index, outcome) in group { outcomes[index] = outcome }
                return (outcomes.filter { $0.key >= 0 }, [outcomes[-1]!, outcomes[-2]!])
            }
            #expect(outcomes.count == 300 && outcomes.values.allSatisfy { $0 == .inserted })
            // Exactly one twin is stored; the other is answered with it.
            let stored = twinOutcomes.filter { $0 == .inserted }.count
            #expect(stored == 1, "\(twinOutcomes)")
            let storedTwin = twinOutcomes[0] == .inserted ? twins.0 : twins.1
            #expect(twinOutcomes.contains(.duplicate(storedTwin)), "\(twinOutcomes)")
            for chat in chats {
                let history = try await store.history(of: chat, before: nil, limit: 200)
                let expected = messages.filter { $0.chatID == chat } + (chat == "chat-a" ? [storedTwin] : [])
                #expect(Set(history.map(\.id)) == Set(expected.map(\.id)), "\(chat): each message stored once")
                #expect(try await store.chat(chat)?.lastMessage == expected.map(\.id).max(), "\(chat)")
            }
        }
    }

    @Test("Concurrent chat and blocker lookups (answered in shared batches) each get their own answer")
    func concurrentLookups() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            for index in 0..<20 {
                try await store.saveChat(Chat(id: ChatID("chat-\(index)"), participants: [UserID("u\(index)"), "hub"], name: "n\(index)"))
            }
            // u0 blocks s0; u1 blocks s0 and s1; u2 blocks nobody.
            try await store.setBlocked("s0", by: "u0", blocked: true)
            try await store.setBlocked("s0", by: "u1", blocked: true)
            try await store.setBlocked("s1", by: "u1", blocked: true)
            try await store.saveUser(User(id: "u2", username: "u2"))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for round in 0..<5 {
                    for index in 0..<25 {
                        group.addTask {
                            let chat = try await store.chat(ChatID("chat-\(index)"))
                            if index < 20 {
                                #expect(chat?.name == "n\(index)" && chat?.participants == [UserID("u\(index)"), "hub"], "round \(round): chat-\(index)")
                            } else {
                                #expect(chat == nil, "chat-\(index) does not exist")
                            }
                        }
                    }
                    let expected: [(UserID, Set<UserID>)] = [("s0", ["u0", "u1"]), ("s1", ["u1"]), ("s2", [])]
                    for (sender, blockers) in expected {
                        group.addTask {
                            let found = try await store.usersBlocking(sender, among: ["u0", "u1", "u2", "u3"])
                            #expect(found == blockers, "round \(round): \(sender)")
                            // Only users asked about count.
                            #expect(try await store.usersBlocking(sender, among: ["u2"]).isEmpty)
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    @Test("An attachment whose field name holds a NUL byte is refused as bad_request; the store keeps working")
    func nulInAttachmentKey() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            let generator = MessageIDGenerator(clock: Self.clock)
            var message = Self.message(generator)
            message.attachments = [.object(["na\u{0}me": .string("x")])]
            await #expect(throws: ChatError.self) { try await store.insert(message, pendingFor: []) }
            do {
                _ = try await store.insert(message, pendingFor: [])
            } catch let error as ChatError {
                #expect(error.code == .badRequest && error.message.contains("NUL"), "\(error)")
            }
            let fine = Self.message(generator)
            #expect(try await store.insert(fine, pendingFor: []) == .inserted)
        }
    }

    @Test("History of 1,000 messages, paginated by id, returns each exactly once, newest first")
    func historyPagination() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            try await store.saveChat(Chat(id: "chat-1", participants: ["alice", "bob"]))
            let generator = MessageIDGenerator(clock: Self.clock)
            var ids: [MessageID] = []
            for index in 0..<1000 {
                let message = Self.message(generator, content: "m\(index)")
                ids.append(message.id)
                _ = try await store.insert(message, pendingFor: [])
            }
            _ = try await store.insert(Self.message(generator, chat: "other"), pendingFor: [])
            var seen: [MessageID] = []
            var before: MessageID?
            while true {
                let page = try await store.history(of: "chat-1", before: before, limit: 64)
                guard let last = page.last else { break }
                seen += page.map(\.id)
                before = last.id
            }
            #expect(seen == ids.reversed())
            #expect(try await store.chat("chat-1")?.lastMessage == ids.last, "the chat's lastMessage follows inserts")
        }
    }

    @Test("Catch-up returns exactly what is pending for the user within the window, and clearing removes it")
    func catchUp() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            let generator = MessageIDGenerator(clock: Self.clock)
            let old = Self.message(generator, content: "old", at: Self.clock.now().addingTimeInterval(-90_000))
            let forBob = (0..<5).map { Self.message(generator, content: "b\($0)") }
            let forCarol = Self.message(generator, content: "c")
            _ = try await store.insert(old, pendingFor: ["bob"])
            for message in forBob { _ = try await store.insert(message, pendingFor: ["bob", "carol"]) }
            _ = try await store.insert(forCarol, pendingFor: ["carol"])
            let since = Self.clock.now().addingTimeInterval(-86_400)

            var pending = try await store.pendingMessages(for: "bob", createdSince: since, afterID: nil, limit: 3)
            #expect(pending.map(\.content) == ["b0", "b1", "b2"])
            pending = try await store.pendingMessages(for: "bob", createdSince: since, afterID: pending.last?.id, limit: 3)
            #expect(pending.map(\.content) == ["b3", "b4"])

            try await store.markDelivered(forBob.prefix(2).map { DeliveryMark(messageID: $0.id, userID: "bob", at: Self.clock.now()) })
            try await store.recordOutcome(.expired, messageID: forBob[2].id, userID: "bob", at: Self.clock.now())
            pending = try await store.pendingMessages(for: "bob", createdSince: since, afterID: nil, limit: 10)
            #expect(pending.map(\.content) == ["b3", "b4"])
            #expect(try await store.receipts(for: forBob[2].id).first { $0.userID == "bob" }?.status == .expired)
            #expect(try await store.pendingMessages(for: "carol", createdSince: since, afterID: nil, limit: 10).count == 6)
        }
    }

    @Test("A document with a missing or mistyped field is an error naming the field")
    func badDocuments() async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            let generator = MessageIDGenerator(clock: Self.clock)
            let missing = generator.next()
            let mistyped = generator.next()
            _ = try await store.command([
                "insert": .string("messages"),
                "documents": .array([
                    .document(["_id": .objectID(missing), "chatId": .string("c"), "senderId": .string("a"), "readBy": .array([]), "createdAt": .date(Date())]),
                    .document(["_id": .objectID(mistyped), "chatId": .string("c"), "senderId": .string("a"), "content": .int(5), "readBy": .array([]), "createdAt": .date(Date())]),
                ]),
            ])
            for (id, field) in [(missing, "content"), (mistyped, "content")] {
                do {
                    _ = try await store.message(id)
                    Issue.record("a bad document decoded")
                } catch let error as ChatError {
                    #expect(error.message.contains("'\(field)'"), "\(error.message)")
                    #expect(error.code == .internalError, "a bad document is not an outage")
                    #expect(!error.isRetriable)
                }
            }
        }
    }

    @Test("Server stopped: calls fail within the bound with unavailable; server back: calls succeed again")
    func serverOutage() async throws {
        try await withMongoServer { server in
            guard server.isOwn else {
                print("SKIPPED: MONGODB_URI names a server this test cannot stop")
                return
            }
            let store = try server.makeStore { $0.serverSelectionTimeout = .milliseconds(500) }
            try await store.saveUser(User(id: "alice", username: "Alice"))
            await server.stop()
            let start = ContinuousClock.now
            do {
                _ = try await store.users(["alice"])
                Issue.record("a call succeeded with the server stopped")
            } catch let error as ChatError {
                #expect(error.code == .unavailable, "\(error)")
            }
            #expect(ContinuousClock.now - start < .seconds(3), "fails within the bound")

            try await server.restart()
            try await store.saveUser(User(id: "bob", username: "Bob"))
            #expect(try await store.users(["bob"])["bob"]?.username == "Bob")
        }
    }

    @Test("The receipts outbox: events kept in order across store instances, bounded by dropping the oldest, removed by id")
    func receiptOutbox() async throws {
        try await withMongoServer { server in
            let generator = MessageIDGenerator()
            let at = Date(timeIntervalSince1970: 1_767_693_600.5)
            let events = (0..<14).map { index in
                ReceiptEvent(id: generator.next(), kind: index == 0 ? .expired : .read, messageID: generator.next(), chatID: "chat-1", userID: "bob.o$", at: at)
            }
            let first = try server.makeStore { $0.receiptOutboxCapacity = 10 }
            #expect(try await first.append(Array(events.prefix(8))) == 0)
            #expect(try await first.append(Array(events.prefix(8))) == 0, "a retried append writes nothing twice")
            #expect(try await first.append(Array(events.suffix(6))) == 4)
            await first.close()
            let store = try server.makeStore { $0.receiptOutboxCapacity = 10 }
            #expect(try await store.oldest(100) == Array(events.suffix(10)))
            try await store.remove(events.suffix(10).prefix(3).map(\.id))
            #expect(try await store.count() == 7)
            #expect(try await store.oldest(2) == Array(events[7..<9]))
        }
    }

    @Test("The product scenarios pass with the MongoDB store", arguments: ProductScenario.all)
    func productScenarios(_ scenario: ProductScenario) async throws {
        try await withMongoServer { server in
            let store = try server.makeStore()
            try await scenario.run(store: { store })
        }
    }
}
