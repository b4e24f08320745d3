public import ChatDomain
import Synchronization
import Foundation

/// The offline queue: table `queue`, one row per entry, in `seq` order per user.
extension SQLiteChatStore {
    public func enqueue(_ entries: [QueueEntry], for user: UserID) async throws -> [MessageID] {
        guard !entries.isEmpty else { return [] }
        let bodies = try entries.map { try Self.encode($0) }
        let now = self.clock.now()
        let limit = self.configuration.queueMaxLength
        let refused = try await self.write { db -> Int in
            let held = Int(try db.integer("SELECT count(*) FROM queue WHERE user_id = ?", [.text(user.rawValue)]) ?? 0)
            let room = max(0, min(entries.count, limit - held))
            for (entry, body) in zip(entries.prefix(room), bodies) {
                try db.run(
                    "INSERT INTO queue (user_id, message_id, enqueued_ms, json) VALUES (?, ?, ?, ?)",
                    // The TTL counts from when the queue took the entry, by the store's clock (as a broker's does).
                    [.text(user.rawValue), .text(entry.message.id.hexString), .integer(Self.milliseconds(now)), .blob(body)]
                )
            }
            return entries.count - room
        }
        // A full queue refuses the newest (a suffix), as RabbitMQ's reject-publish does.
        let rejected = entries.suffix(refused)
        for entry in rejected { self.deadLetterContinuation.yield(DeadLetter(entry: entry, reason: .rejected, at: now)) }
        return rejected.map(\.message.id)
    }

    public func consumer(for user: UserID, prefetch: Int) async throws -> any QueueConsumer {
        let id = self.consumers.withLock { state in
            defer { state.nextID += 1 }
            state.open[state.nextID] = user
            return state.nextID
        }
        return SQLiteQueueConsumer(store: self, user: user, id: id, prefetch: max(1, prefetch))
    }

    public func depth(for user: UserID) async throws -> QueueDepth {
        let total = try await self.read { db in
            Int(try db.integer("SELECT count(*) FROM queue WHERE user_id = ?", [.text(user.rawValue)]) ?? 0)
        }
        return self.consumers.withLock { state in
            let held = state.handedOut[user]?.count ?? 0
            return QueueDepth(ready: max(0, total - held), unacknowledged: held, consumers: state.open.values.count { $0 == user })
        }
    }

    public func deadLetters() -> AsyncStream<DeadLetter> {
        self.deadLetterStream
    }

    public func publishDeliveryEvents(_ events: [DeliveryEvent]) async throws {
        guard !events.isEmpty else { return }
        try await self.write { db in
            for event in events {
                try db.run(
                    "INSERT INTO delivery_events (at_ms, message_id, user_id, status) VALUES (?, ?, ?, ?)",
                    [.integer(Self.milliseconds(event.timestamp)), .text(event.messageID.hexString), .text(event.userID.rawValue), .text(event.status.rawValue)]
                )
            }
        }
    }

    /// The delivery events kept (at most ``SQLiteStoreConfiguration/deliveryEventLimit``, none older than its
    /// retention once the next expiry pass ran).
    public func deliveryEventCount() async throws -> Int {
        try await self.read { db in Int(try db.integer("SELECT count(*) FROM delivery_events") ?? 0) }
    }

    /// Dead-letters queue entries older than the TTL that no consumer holds (a held entry expires once it is
    /// returned, as in RabbitMQ), and drops delivery events past their retention or the limit.
    func expireAndTrim() async {
        let now = self.clock.now()
        let cutoff = Self.milliseconds(now) - Int64(self.configuration.queueTTL.wholeMilliseconds)
        let eventCutoff = Self.milliseconds(now) - Int64(self.configuration.deliveryEventRetention.wholeMilliseconds)
        let eventLimit = Int64(self.configuration.deliveryEventLimit)
        let held = self.consumers.withLock { state in Set(state.handedOut.values.flatMap(\.keys)) }
        do {
            let expired = try await self.write { db -> [QueueEntry] in
                var expired: [(seq: Int64, entry: QueueEntry)] = []
                try db.run("SELECT seq, json FROM queue WHERE enqueued_ms <= ? ORDER BY seq LIMIT 1000", [.integer(cutoff)]) { row in
                    let seq = row.integer(0)
                    guard !held.contains(seq) else { return }
                    expired.append((seq, try Self.decode(QueueEntry.self, row.blob(1))))
                }
                for item in expired { try db.run("DELETE FROM queue WHERE seq = ?", [.integer(item.seq)]) }
                try db.run(
                    "DELETE FROM delivery_events WHERE at_ms < ? OR seq <= (SELECT max(seq) FROM delivery_events) - ?",
                    [.integer(eventCutoff), .integer(eventLimit)]
                )
                return expired.map(\.entry)
            }
            for entry in expired { self.deadLetterContinuation.yield(DeadLetter(entry: entry, reason: .expired, at: now)) }
        } catch {
            self.logger.debug("Expiry pass failed; the next one tries again", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Consumer operations

    /// A queue row as a consumer reads it.
    struct QueueRow: Sendable {
        var seq: Int64
        var json: Data
        var redelivered: Bool
        var enqueued: Int64
    }

    /// Checks that `consumer` is open and below its prefetch.
    func checkRoom(user: UserID, consumer: UInt64, prefetch: Int) throws(ChatError) {
        try self.consumers.withLock { state throws(ChatError) in
            guard state.open[consumer] != nil else { throw ChatError(.unavailable, "this consumer was closed; open a new one") }
            guard (state.handedOut[user] ?? [:]).values.count(where: { $0 == consumer }) < prefetch else {
                throw ChatError(.badRequest, "consumer has \(prefetch) unacknowledged deliveries (its prefetch); ack some first")
            }
        }
    }

    /// Up to `limit` of `user`'s rows after `seq`, in order: one read for a consumer's next `limit` deliveries.
    func rows(of user: UserID, after seq: Int64, limit: Int) async throws(ChatError) -> [QueueRow] {
        try await self.read { db in
            var rows: [QueueRow] = []
            try db.run(
                "SELECT seq, json, redelivered, enqueued_ms FROM queue WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                [.text(user.rawValue), .integer(seq), .integer(Int64(limit))]
            ) { row in rows.append(QueueRow(seq: row.integer(0), json: row.blob(1), redelivered: row.integer(2) != 0, enqueued: row.integer(3))) }
            return rows
        }
    }

    /// Hands `row` to `consumer` unless another consumer holds it or it expired (nil: skip it; an expired row is
    /// the expiry pass's, which dead-letters it).
    func take(_ row: QueueRow, user: UserID, consumer: UInt64) throws(ChatError) -> QueueDelivery? {
        let cutoff = Self.milliseconds(self.clock.now()) - Int64(self.configuration.queueTTL.wholeMilliseconds)
        guard row.enqueued > cutoff else { return nil }
        let taken = self.consumers.withLock { state -> Bool in
            guard state.open[consumer] != nil, state.handedOut[user]?[row.seq] == nil else { return false }
            state.handedOut[user, default: [:]][row.seq] = consumer
            return true
        }
        guard taken else { return nil }
        do {
            let entry = try Self.decode(QueueEntry.self, row.json)
            return QueueDelivery(entry: entry, tag: DeliveryTag(UInt64(row.seq)), redelivered: row.redelivered)
        } catch {
            throw Self.storeError(error).chatError
        }
    }

    func settle(_ tags: [DeliveryTag], user: UserID, consumer: UInt64, requeue: Bool) async throws {
        let sequences = try self.consumers.withLock { state throws(ChatError) -> [Int64] in
            guard state.open[consumer] != nil else { throw ChatError(.unavailable, "this consumer was closed; open a new one") }
            let sequences = tags.map { Int64($0.rawValue) }
            for seq in sequences where state.handedOut[user]?[seq] != consumer {
                throw ChatError(.badRequest, "unknown delivery tag \(seq) for this consumer")
            }
            return sequences
        }
        try await self.write { db in
            for seq in sequences {
                if requeue {
                    try db.run("UPDATE queue SET redelivered = 1 WHERE seq = ?", [.integer(seq)])
                } else {
                    try db.run("DELETE FROM queue WHERE seq = ?", [.integer(seq)])
                }
            }
        }
        self.consumers.withLock { state in
            for seq in sequences { state.handedOut[user]?[seq] = nil }
            if state.handedOut[user]?.isEmpty == true { state.handedOut[user] = nil }
        }
    }

    func close(consumer: UInt64, user: UserID) async {
        let returned = self.consumers.withLock { state -> [Int64] in
            guard state.open.removeValue(forKey: consumer) != nil else { return [] }
            let returned = (state.handedOut[user] ?? [:]).filter { $0.value == consumer }.map(\.key)
            for seq in returned { state.handedOut[user]?[seq] = nil }
            if state.handedOut[user]?.isEmpty == true { state.handedOut[user] = nil }
            return returned
        }
        guard !returned.isEmpty else { return }
        // Back at their place (the rows never moved), flagged redelivered.
        do {
            try await self.write { db in
                for seq in returned { try db.run("UPDATE queue SET redelivered = 1 WHERE seq = ?", [.integer(seq)]) }
            }
        } catch {
            self.logger.debug("Could not flag returned entries redelivered", metadata: ["error": "\(error)"])
        }
    }
}

/// A consumer of one user's queue in the SQLite store. It reads its queue a prefetch window at a time and hands
/// the rows out one by one; a nack puts its reading position back, so the returned entry comes again at its place.
final class SQLiteQueueConsumer: QueueConsumer {
    private struct Cursor {
        /// Rows read and not handed out yet.
        var buffered: [SQLiteChatStore.QueueRow] = []
        /// The highest sequence read so far.
        var position: Int64 = 0
    }

    private let store: SQLiteChatStore
    private let user: UserID
    private let id: UInt64
    private let prefetch: Int
    private let cursor = Mutex(Cursor())

    init(store: SQLiteChatStore, user: UserID, id: UInt64, prefetch: Int) {
        self.store = store
        self.user = user
        self.id = id
        self.prefetch = prefetch
    }

    func next() async throws -> QueueDelivery? {
        try self.store.checkRoom(user: self.user, consumer: self.id, prefetch: self.prefetch)
        while true {
            let row = self.cursor.withLock { cursor -> SQLiteChatStore.QueueRow? in
                cursor.buffered.isEmpty ? nil : cursor.buffered.removeFirst()
            }
            if let row {
                if let delivery = try self.store.take(row, user: self.user, consumer: self.id) { return delivery }
                continue
            }
            let position = self.cursor.withLock { $0.position }
            let rows = try await self.store.rows(of: self.user, after: position, limit: self.prefetch)
            guard let last = rows.last else { return nil }
            self.cursor.withLock { cursor in
                cursor.buffered = rows
                cursor.position = last.seq
            }
        }
    }

    func ack(_ tag: DeliveryTag) async throws {
        try await self.store.settle([tag], user: self.user, consumer: self.id, requeue: false)
    }

    func ack(_ tags: [DeliveryTag]) async throws {
        try await self.store.settle(tags, user: self.user, consumer: self.id, requeue: false)
    }

    func nack(_ tag: DeliveryTag) async throws {
        try await self.store.settle([tag], user: self.user, consumer: self.id, requeue: true)
        // Read again from the returned entry's place.
        self.cursor.withLock { cursor in
            cursor.position = min(cursor.position, Int64(tag.rawValue) - 1)
            cursor.buffered = []
        }
    }

    func close() async {
        await self.store.close(consumer: self.id, user: self.user)
    }
}
