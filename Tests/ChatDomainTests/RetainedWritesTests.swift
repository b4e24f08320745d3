@testable import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// What happens to confirmed deliveries (`readBy`) and receipt events when the store cannot take them.
@Suite("Writes kept through a store outage")
struct RetainedWritesTests {
    @Test("Store down while queued messages are delivered: readBy and the receipt events are written when it returns")
    func outageDelaysInsteadOfLosing() async throws {
        let deadlines = ManualMonotonicClock()
        let outbox = SwitchableOutbox()
        try await withHarness(deadlines: deadlines, receiptOutbox: outbox) { h in
            let alice = await h.connect(Harness.alice)
            let one = try await h.send("one", from: alice)
            let two = try await h.send("two", from: alice)
            #expect(try await h.depth(of: Harness.bob) == 2)

            h.memoryStore!.setAvailable(false)
            outbox.setAvailable(false)
            let bob = await h.connect(Harness.bob)
            _ = await h.service.reconnected(bob)
            #expect(h.contents(of: bob) == ["one", "two"], "the queue delivers while the store is down")
            await eventually("the failed readBy write is logged") {
                h.logs.contains("Delivery confirmations (readBy updates) could not be written; kept and written when the store takes them", level: .warning)
            }
            await eventually("the failed outbox write is logged") {
                h.logs.contains("Receipt events for the webhook could not be written; kept and written when the store takes them", level: .warning)
            }

            h.memoryStore!.setAvailable(true)
            outbox.setAvailable(true)
            // The writers retry on the engine's clock: move it on until they have.
            try await eventually("readBy gains bob for both messages") {
                deadlines.advance(by: .milliseconds(500))
                let first = try await h.pendingRecipients(of: one.messageID)
                let second = try await h.pendingRecipients(of: two.messageID)
                return first.isEmpty && second.isEmpty
            }
            #expect(try await h.store.message(one.messageID)?.isRead(by: Harness.bob.id) == true)
            #expect(try await h.store.message(two.messageID)?.isRead(by: Harness.bob.id) == true)
            try await eventually("both delivered events reach the outbox") {
                deadlines.advance(by: .milliseconds(500))
                return try await outbox.oldest(10).filter { $0.kind == .delivered }.map(\.messageID) == [one.messageID, two.messageID]
            }
            #expect(h.logs.contains("Delivery confirmations (readBy updates) are being written again", level: .info))
            #expect(!h.logs.all.contains { $0.message.contains("dropped") }, "nothing was dropped")
        }
    }

    @Test("Past maxRetainedWrites the oldest kept items are dropped with a warning; the rest are written")
    func boundedWhileDown() async {
        let clock = ManualMonotonicClock()
        let logs = LogCapture()
        let down = Locked(true)
        let written = Locked<[Int]>([])
        let dropped = Locked(0)
        let writer = BatchWriter<Int>(
            maxBatch: 2,
            logger: logs.logger(),
            subject: "Numbers",
            failureLevel: .warning,
            retention: BatchRetention(capacity: 4, clock: clock, isTransient: ChatService.isUnreachable, dropped: { count in dropped.withLock { $0 += count } }),
            write: { items in
                if down.value { throw ChatError(.storeUnavailable, "down") }
                written.withLock { $0.append(contentsOf: items) }
            }
        )
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await writer.run() }
            for number in 1...7 {
                writer.record([number])
                await writer.flush()
            }
            await eventually("seven attempted, four kept") { writer.retainedCount == 4 }
            #expect(dropped.value == 3)
            #expect(logs.contains("Numbers dropped: more than the limit wait for the store", level: .warning))
            down.withLock { $0 = false }
            await eventually("the kept ones are written, oldest first") {
                clock.advance(by: .seconds(2))
                return written.value == [4, 5, 6, 7]
            }
            #expect(writer.retainedCount == 0)
            group.cancelAll()
        }
    }

    @Test("A write the store refuses is dropped at once (it would hold back everything after it); without a retention failures drop")
    func refusedIsDropped() async {
        let clock = ManualMonotonicClock()
        let logs = LogCapture()
        let attempts = Locked(0)
        let writer = Self.failingWriter(ChatError(.badRequest, "refused"), clock: clock, logs: logs, attempts: attempts)
        let plain = BatchWriter<Int>(maxBatch: 10, logger: logs.logger(), subject: "Events", failureLevel: .debug) { _ in
            throw ChatError(.unavailable, "down")
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await writer.run() }
            group.addTask { await plain.run() }
            writer.record([1, 2])
            plain.record([1, 2])
            await writer.flush()
            await plain.flush()
            #expect(writer.retainedCount == 0 && plain.retainedCount == 0)
            #expect(attempts.value == 1)
            #expect(logs.contains("Numbers could not be written and are dropped", level: .error))
            #expect(logs.contains("Events could not be written and are dropped", level: .debug))
            group.cancelAll()
        }
    }

    @Test("Shutting down while the store is down: one last attempt, then what is kept is dropped with an error")
    func shutdownDuringOutage() async {
        let clock = ManualMonotonicClock()
        let logs = LogCapture()
        let attempts = Locked(0)
        let writer = Self.failingWriter(ChatError(.storeUnavailable, "down"), clock: clock, logs: logs, attempts: attempts)
        let running = Task { await writer.run() }
        writer.record([1, 2, 3])
        await eventually("the first attempt failed and kept them") { writer.retainedCount == 3 && clock.sleeperCount == 1 }
        running.cancel()
        await running.value
        #expect(attempts.value == 2, "one more attempt at shutdown")
        #expect(logs.contains("Numbers could not be written and are dropped at shutdown", level: .error))
        // flush() after the end returns at once.
        await writer.flush()
    }

    /// A writer of numbers, kept up to 100, whose every write counts an attempt and fails with `error`.
    static func failingWriter(_ error: ChatError, clock: ManualMonotonicClock, logs: LogCapture, attempts: Locked<Int>) -> BatchWriter<Int> {
        BatchWriter<Int>(
            maxBatch: 10,
            logger: logs.logger(),
            subject: "Numbers",
            failureLevel: .warning,
            retention: BatchRetention(capacity: 100, clock: clock, isTransient: ChatService.isUnreachable),
            write: { _ in
                attempts.withLock { $0 += 1 }
                throw error
            }
        )
    }
}

/// An in-memory outbox that can be switched to an outage, as the store holding it would be.
final class SwitchableOutbox: ReceiptOutbox {
    private let events = InMemoryReceiptOutbox()
    private let available = Locked(true)

    var capacity: Int { self.events.capacity }

    func setAvailable(_ available: Bool) {
        self.available.withLock { $0 = available }
    }

    func append(_ events: [ReceiptEvent]) async throws -> Int {
        guard self.available.value else { throw ChatError(.storeUnavailable, "the outbox is switched to an outage") }
        return try await self.events.append(events)
    }

    func oldest(_ limit: Int) async throws -> [ReceiptEvent] { try await self.events.oldest(limit) }
    func remove(_ ids: [MessageID]) async throws { try await self.events.remove(ids) }
    func count() async throws -> Int { try await self.events.count() }
}
