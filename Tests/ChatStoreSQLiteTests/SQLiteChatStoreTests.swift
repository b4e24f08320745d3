import ChatDomain
import ChatScenarioKit
import ChatStoreSQLite
import Foundation
import Logging
import Testing

/// The SQLite store and queue, on files in a temporary directory of each test's own.
@Suite("SQLite store and queue")
struct SQLiteChatStoreTests {
    private static let start = Date(timeIntervalSince1970: 1_767_693_600.123)

    /// Runs `body` with a fresh directory, removed afterwards.
    private func withDirectory(_ body: (URL) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("chatd-sqlite-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try await body(directory)
    }

    private func open(_ directory: URL, clock: any WallClock = SystemWallClock(), _ configure: (inout SQLiteStoreConfiguration) -> Void = { _ in }) throws -> SQLiteChatStore {
        var configuration = SQLiteStoreConfiguration(directory: directory)
        configure(&configuration)
        return try SQLiteChatStore(configuration: configuration, clock: clock, logger: Logger(label: "sqlite"))
    }

    private static func message(_ generator: MessageIDGenerator, chat: ChatID = "chat-1", content: String = "hello", at date: Date = start, clientMessageID: String? = nil) -> Message {
        Message(
            id: generator.next(), chatID: chat, senderID: "alice", content: content,
            readBy: [ReadReceipt(userID: "alice", readAt: date)], createdAt: date, clientMessageID: clientMessageID
        )
    }

    private static func entries(_ count: Int, for user: UserID = "bob", at date: Date = Date()) -> [QueueEntry] {
        let generator = MessageIDGenerator()
        return (0..<count).map { index in
            QueueEntry(message: Self.message(generator, content: "m\(index)", at: date), sender: User(id: "alice", username: "Alice"), recipient: user, enqueuedAt: date)
        }
    }

    private static func drain(_ consumer: any QueueConsumer) async throws -> [QueueDelivery] {
        var deliveries: [QueueDelivery] = []
        while let delivery = try await consumer.next() { deliveries.append(delivery) }
        return deliveries
    }

    @Test("The product scenarios pass on the SQLite store (and, where any queue can run them, on its queue too)", arguments: ProductScenario.all)
    func productScenarios(_ scenario: ProductScenario) async throws {
        try await self.withDirectory { directory in
            let store = try self.open(directory)
            if scenario.needsControllableQueue {
                try await scenario.run(store: { store })
            } else {
                try await scenario.run(store: { store }, queue: { store })
            }
            await store.close()
        }
    }

    @Test("The receipts outbox and read marks survive a reopen; the outbox keeps to its capacity, dropping the oldest")
    func outboxAndReadMarks() async throws {
        try await self.withDirectory { directory in
            let generator = MessageIDGenerator()
            let events = (0..<14).map { index in
                ReceiptEvent(id: generator.next(), kind: .delivered, messageID: generator.next(), chatID: "chat-1", userID: "bob", at: Self.start.addingTimeInterval(Double(index)))
            }
            let message = Self.message(generator)
            do {
                let store = try self.open(directory) { $0.receiptOutboxCapacity = 10 }
                #expect(try await store.append(Array(events.prefix(8))) == 0)
                #expect(try await store.append(Array(events.suffix(6))) == 4)
                try await store.saveChat(Chat(id: "chat-1", participants: ["alice", "bob"]))
                _ = try await store.insert(message, pendingFor: ["bob"])
                let mark = ReadMark(chatID: "chat-1", userID: "bob", messageID: message.id, readAt: Self.start)
                #expect(try await store.markRead(mark) == .advanced(mark))
                await store.close()
            }
            let store = try self.open(directory) { $0.receiptOutboxCapacity = 10 }
            #expect(try await store.oldest(100) == Array(events.suffix(10)), "the newest ten, oldest first")
            try await store.remove(events.suffix(10).prefix(3).map(\.id))
            #expect(try await store.count() == 7)
            #expect(try await store.oldest(1).map(\.id) == [events[7].id])
            #expect(try await store.receipts(for: message.id).first?.readAt == Self.start)
            #expect(try await store.readState(of: ["chat-1"], for: "bob")["chat-1"] == ChatReadState(unreadCount: 0, readUpTo: ["bob": message.id]))
            await store.close()
        }
    }

    @Test("Everything survives closing and opening the file again: chats, messages, what is pending, queue order, block lists")
    func reopen() async throws {
        try await self.withDirectory { directory in
            let generator = MessageIDGenerator()
            var ids: [MessageID] = []
            do {
                let store = try self.open(directory)
                try await store.saveChat(Chat(id: "chat-1", participants: ["alice", "bob", "carol"], name: "trio"))
                try await store.saveUser(User(id: "bob", username: "Bob"))
                for index in 0..<3 {
                    let message = Self.message(generator, content: "m\(index) héllo ✓")
                    ids.append(message.id)
                    #expect(try await store.insert(message, pendingFor: ["bob", "carol"]) == .inserted)
                }
                try await store.markDelivered([DeliveryMark(messageID: ids[0], userID: "bob", at: Self.start)])
                try await store.setBlocked("mallory", by: "bob", blocked: true)
                #expect(try await store.enqueue(Self.entries(5), for: "bob").isEmpty)
                await store.close()
            }
            let store = try self.open(directory)
            let chat = try #require(try await store.chat("chat-1"))
            #expect(chat.name == "trio" && chat.participants == ["alice", "bob", "carol"] && chat.lastMessage == ids[2])
            #expect(try await store.chats(of: "carol").map(\.id) == ["chat-1"])
            #expect(try await store.users(["bob", "nobody"]) == ["bob": User(id: "bob", username: "Bob")])
            #expect(try await store.history(of: "chat-1", before: nil, limit: 10).map(\.id) == ids.reversed())
            #expect(try await store.pendingMessages(for: "bob", createdSince: .distantPast, afterID: nil, limit: 10).map(\.id) == Array(ids[1...]))
            #expect(try await store.pendingMessages(for: "carol", createdSince: .distantPast, afterID: ids[0], limit: 1).map(\.id) == [ids[1]])
            #expect(try await store.pendingMessages(for: "carol", createdSince: Self.start.addingTimeInterval(1), afterID: nil, limit: 10).isEmpty, "outside the catch-up window")
            #expect(try await store.message(ids[0])?.readBy.map(\.userID) == ["alice", "bob"])
            #expect(try await store.usersBlocking("mallory", among: ["bob", "carol"]) == ["bob"])
            let consumer = try await store.consumer(for: "bob", prefetch: 10)
            #expect(try await Self.drain(consumer).map(\.entry.message.content) == (0..<5).map { "m\($0)" })
            await consumer.close()
            await store.close()
        }
    }

    @Test("A repeated clientMessageId is answered with the first message; concurrent twins store one; readBy holds a user once")
    func idempotence() async throws {
        try await self.withDirectory { directory in
            let store = try self.open(directory)
            let generator = MessageIDGenerator()
            let first = Self.message(generator, clientMessageID: "k1")
            #expect(try await store.insert(first, pendingFor: ["bob"]) == .inserted)
            #expect(try await store.insert(Self.message(generator, clientMessageID: "k1"), pendingFor: ["bob"]) == .duplicate(first))
            #expect(try await store.insert(Self.message(generator, chat: "chat-2", clientMessageID: "k1"), pendingFor: ["bob"]) == .inserted, "another chat: another message")
            let twins = (0..<2).map { _ in Self.message(generator, chat: "chat-3", clientMessageID: "twin") }
            let outcomes = try await withThrowingTaskGroup(of: InsertOutcome.self) { group in
                for twin in twins { group.addTask { try await store.insert(twin, pendingFor: ["bob"]) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(outcomes.filter { $0 == .inserted }.count == 1)
            #expect(try await store.history(of: "chat-3", before: nil, limit: 10).count == 1)
            let mark = DeliveryMark(messageID: first.id, userID: "bob", at: Self.start)
            try await store.markDelivered([mark, mark])
            try await store.markDelivered([mark])
            #expect(try await store.message(first.id)?.readBy.filter { $0.userID == "bob" }.count == 1)
            #expect(try await store.receipts(for: first.id).map(\.status) == [.delivered])
            await store.close()
        }
    }

    @Test("Chats and block lists answered from memory follow every write: participants, lastMessage, blocks and unblocks")
    func cachesFollowWrites() async throws {
        try await self.withDirectory { directory in
            let store = try self.open(directory)
            #expect(try await store.chat("chat-9") == nil)
            try await store.saveChat(Chat(id: "chat-9", participants: ["alice", "bob"]))
            #expect(try await store.chat("chat-9")?.participants == ["alice", "bob"], "a chat created after a miss")
            try await store.saveChat(Chat(id: "chat-9", participants: ["alice", "bob", "carol"]))
            #expect(try await store.chat("chat-9")?.participants == ["alice", "bob", "carol"])
            let generator = MessageIDGenerator()
            for index in 0..<3 {
                let message = Self.message(generator, chat: "chat-9", content: "m\(index)")
                _ = try await store.insert(message, pendingFor: ["bob"])
                #expect(try await store.chat("chat-9")?.lastMessage == message.id)
            }
            #expect(try await store.usersBlocking("mallory", among: ["bob", "carol"]) == [])
            try await store.setBlocked("mallory", by: "bob", blocked: true)
            #expect(try await store.usersBlocking("mallory", among: ["bob", "carol"]) == ["bob"])
            #expect(try await store.blockedUsers(of: "bob") == ["mallory"])
            try await store.setBlocked("mallory", by: "bob", blocked: false)
            #expect(try await store.usersBlocking("mallory", among: ["bob", "carol"]) == [])
            await store.close()
            // And what was cached is what the file holds.
            let reopened = try self.open(directory)
            #expect(try await reopened.chat("chat-9")?.participants == ["alice", "bob", "carol"])
            #expect(try await reopened.blockedUsers(of: "bob") == [])
            await reopened.close()
        }
    }

    @Test("Concurrent writes share commits: 400 sends, every one stored, far fewer commits")
    func groupCommit() async throws {
        try await self.withDirectory { directory in
            let store = try self.open(directory)
            let generator = MessageIDGenerator()
            let messages = (0..<400).map { Self.message(generator, chat: ChatID("chat-\($0 % 8)"), content: "m\($0)") }
            let before = store.commitCount
            try await withThrowingTaskGroup(of: Void.self) { group in
                for message in messages { group.addTask { _ = try await store.insert(message, pendingFor: ["bob"]) } }
                try await group.waitForAll()
            }
            let commits = store.commitCount - before
            #expect(try await store.pendingMessages(for: "bob", createdSince: .distantPast, afterID: nil, limit: 1000).count == 400)
            #expect(commits < 200, "\(commits) commits for 400 concurrent inserts")
            await store.close()
        }
    }

    @Test("The queue: per-user order, a bound that refuses the newest, nack and close return entries at their place flagged redelivered, prefetch")
    func queue() async throws {
        try await self.withDirectory { directory in
            let store = try self.open(directory) { $0.queueMaxLength = 4 }
            let letters = Locked<[DeadLetter]>([])
            let reader = Task { for await letter in store.deadLetters() { letters.withLock { $0.append(letter) } } }
            let entries = Self.entries(6)
            let refused = try await store.enqueue(entries, for: "bob")
            #expect(refused == entries.suffix(2).map(\.message.id))
            #expect(try await store.enqueue(Self.entries(1, for: "carol"), for: "carol").isEmpty, "the bound is per user")
            await eventually("two rejected dead letters") { letters.value.filter { $0.reason == .rejected }.count == 2 }

            let consumer = try await store.consumer(for: "bob", prefetch: 2)
            let first = try #require(try await consumer.next())
            let second = try #require(try await consumer.next())
            await #expect(throws: ChatError.self) { try await consumer.next() }
            #expect(try await store.depth(for: "bob") == QueueDepth(ready: 2, unacknowledged: 2, consumers: 1))
            try await consumer.nack(first.tag)
            try await consumer.ack(second.tag)
            let again = try #require(try await consumer.next())
            #expect(again.entry == entries[0] && again.redelivered, "back at its place, flagged")
            await consumer.close()
            let next = try await store.consumer(for: "bob", prefetch: 10)
            let rest = try await Self.drain(next)
            #expect(rest.map(\.entry) == [entries[0], entries[2], entries[3]])
            #expect(rest.map(\.redelivered) == [true, false, false])
            try await next.ack(rest.map(\.tag))
            #expect(try await store.depth(for: "bob") == QueueDepth(ready: 0, unacknowledged: 0, consumers: 1))
            await next.close()
            reader.cancel()
            await store.close()
        }
    }

    @Test("Entries older than the TTL are dead-lettered as expired and never handed out; delivery events are kept to the limit")
    func expiry() async throws {
        try await self.withDirectory { directory in
            let clock = ManualWallClock(start: Date())
            let store = try self.open(directory, clock: clock) {
                $0.queueTTL = .seconds(60)
                $0.expiryInterval = .milliseconds(20)
                $0.deliveryEventLimit = 10
            }
            let service = Task { try await store.run() }
            let letters = Locked<[DeadLetter]>([])
            let reader = Task { for await letter in store.deadLetters() { letters.withLock { $0.append(letter) } } }
            let old = Self.entries(3, at: clock.now())
            _ = try await store.enqueue(old, for: "bob")
            clock.advance(by: 61)
            let fresh = Self.entries(1, at: clock.now())
            _ = try await store.enqueue(fresh, for: "bob")
            await eventually("the three to expire") { letters.value.filter { $0.reason == .expired }.count == 3 }
            #expect(letters.value.map(\.entry) == old)
            let consumer = try await store.consumer(for: "bob", prefetch: 10)
            #expect(try await Self.drain(consumer).map(\.entry) == fresh)
            await consumer.close()

            let events = (0..<25).map { _ in DeliveryEvent(messageID: MessageIDGenerator().next(), userID: "bob", status: .sent, timestamp: clock.now()) }
            try await store.publishDeliveryEvents(events)
            try await eventually("delivery events trimmed to 10") { try await store.deliveryEventCount() == 10 }
            reader.cancel()
            service.cancel()
            _ = try? await service.value
        }
    }

    @Test("A file chatd cannot use stops the start with a message that names it: unwritable place, not SQLite, another program's database, a newer schema")
    func badFiles() async throws {
        try await self.withDirectory { directory in
            // A "directory" that is a regular file: nothing can be created under it.
            let file = directory.appendingPathComponent("plain-file")
            try Data("x".utf8).write(to: file)
            let unwritable = SQLiteStoreConfiguration(path: file.appendingPathComponent("chatd.sqlite").path)
            #expect { _ = try SQLiteChatStore(configuration: unwritable, logger: Logger(label: "t")) } throws: { error in
                let error = error as? SQLiteStoreError
                return error?.code == .cannotOpen && error?.message.contains(unwritable.path) == true
            }

            let garbage = directory.appendingPathComponent("garbage.sqlite")
            try Data(repeating: 0x42, count: 8192).write(to: garbage)
            #expect { _ = try SQLiteChatStore(configuration: SQLiteStoreConfiguration(path: garbage.path), logger: Logger(label: "t")) } throws: { error in
                let error = error as? SQLiteStoreError
                return error?.code == .notChatdDatabase && error?.message.contains(garbage.path) == true
            }

            let foreign = directory.appendingPathComponent("foreign.sqlite")
            try Self.sqlite(foreign, "CREATE TABLE recipes (name TEXT)")
            #expect { _ = try SQLiteChatStore(configuration: SQLiteStoreConfiguration(path: foreign.path), logger: Logger(label: "t")) } throws: { error in
                let error = error as? SQLiteStoreError
                return error?.code == .notChatdDatabase && error?.message.contains("another program") == true
            }

            let newer = directory.appendingPathComponent("newer.sqlite")
            try Self.sqlite(newer, "PRAGMA application_id = \(0x6368_7464); PRAGMA user_version = 99")
            #expect { _ = try SQLiteChatStore(configuration: SQLiteStoreConfiguration(path: newer.path), logger: Logger(label: "t")) } throws: { error in
                let error = error as? SQLiteStoreError
                return error?.code == .newerSchema && error?.message.contains("newer chatd") == true
            }
        }
    }

    /// Runs `sql` on `file` with the sqlite3 command-line shell's library, through a store-independent path.
    private static func sqlite(_ file: URL, _ sql: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit(); c.close()", file.path, sql]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestServerError("python3 sqlite3 failed on \(file.path)") }
    }
}
