import DequeModule
import Synchronization

/// A ``ReceiptOutbox`` in process memory: bounded, lost with the process (the embedded in-memory mode).
public final class InMemoryReceiptOutbox: ReceiptOutbox {
    public let capacity: Int
    private let events = Mutex(Deque<ReceiptEvent>())

    /// An empty outbox holding at most `capacity` events (at least 1).
    public init(capacity: Int = 100_000) {
        self.capacity = max(1, capacity)
    }

    public func append(_ events: [ReceiptEvent]) async throws -> Int {
        self.events.withLock { queue in
            queue.append(contentsOf: events)
            let overflow = max(0, queue.count - self.capacity)
            queue.removeFirst(overflow)
            return overflow
        }
    }

    public func oldest(_ limit: Int) async throws -> [ReceiptEvent] {
        self.events.withLock { Array($0.prefix(max(0, limit))) }
    }

    public func remove(_ ids: [MessageID]) async throws {
        let removed = Set(ids)
        self.events.withLock { $0.removeAll { removed.contains($0.id) } }
    }

    public func count() async throws -> Int {
        self.events.withLock { $0.count }
    }
}
