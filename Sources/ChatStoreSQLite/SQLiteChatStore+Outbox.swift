public import ChatDomain
import Foundation

/// The receipts webhook's outbox as a table of the same file: events survive a restart, and an append past
/// ``SQLiteStoreConfiguration/receiptOutboxCapacity`` removes the oldest in the same transaction.
extension SQLiteChatStore: ReceiptOutbox {
    public var capacity: Int { max(1, self.configuration.receiptOutboxCapacity) }

    public func append(_ events: [ReceiptEvent]) async throws -> Int {
        guard !events.isEmpty else { return 0 }
        let capacity = self.capacity
        return try await self.write { db in
            for event in events {
                try db.run("INSERT OR IGNORE INTO receipt_outbox (id, json) VALUES (?, ?)", [.text(event.id.hexString), .blob(try Self.encode(event))])
            }
            let overflow = Int(try db.integer("SELECT count(*) FROM receipt_outbox") ?? 0) - capacity
            guard overflow > 0 else { return 0 }
            return try db.run(
                "DELETE FROM receipt_outbox WHERE id IN (SELECT id FROM receipt_outbox ORDER BY id LIMIT ?)",
                [.integer(Int64(overflow))]
            )
        }
    }

    public func oldest(_ limit: Int) async throws -> [ReceiptEvent] {
        guard limit > 0 else { return [] }
        return try await self.read { db in
            var events: [ReceiptEvent] = []
            try db.run("SELECT json FROM receipt_outbox ORDER BY id LIMIT ?", [.integer(Int64(limit))]) { row in
                events.append(try Self.decode(ReceiptEvent.self, row.blob(0)))
            }
            return events
        }
    }

    public func remove(_ ids: [MessageID]) async throws {
        guard !ids.isEmpty else { return }
        try await self.write { db in
            for chunk in Self.chunks(ids) {
                try db.run("DELETE FROM receipt_outbox WHERE id IN (\(Self.placeholders(chunk.count)))", chunk.map { .text($0.hexString) })
            }
        }
    }

    public func count() async throws -> Int {
        try await self.read { db in Int(try db.integer("SELECT count(*) FROM receipt_outbox") ?? 0) }
    }
}
