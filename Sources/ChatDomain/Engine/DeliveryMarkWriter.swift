import Logging
import Synchronization

/// Writes confirmed deliveries (`readBy` gains the recipient, the recipient leaves the pending list) in batches.
///
/// Marks recorded while a write is in flight go into the next write (group commit), so the store sees one
/// write per batch however many deliveries are confirmed at once, and no timer delays a quiet system.
final class DeliveryMarkWriter: Sendable {
    private struct State {
        var buffer: [DeliveryMark] = []
        var recorded: UInt64 = 0
        var settled: UInt64 = 0
        var waiters: [(target: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        var finished = false
    }

    private let store: any MessageStore
    private let maxBatch: Int
    private let logger: Logger
    private let state = Mutex(State())
    private let wakeups: AsyncStream<Void>
    private let wakeupContinuation: AsyncStream<Void>.Continuation

    init(store: any MessageStore, maxBatch: Int, logger: Logger) {
        self.store = store
        self.maxBatch = maxBatch
        self.logger = logger
        (self.wakeups, self.wakeupContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Queues marks for the next write; returns at once.
    func record(_ marks: [DeliveryMark]) {
        guard !marks.isEmpty else { return }
        self.state.withLock { state in
            state.buffer.append(contentsOf: marks)
            state.recorded += UInt64(marks.count)
        }
        self.wakeupContinuation.yield()
    }

    /// Returns once every mark recorded before the call was written (or its write failed).
    func flush() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if state.settled >= state.recorded || state.finished { return true }
                state.waiters.append((state.recorded, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Writes until the task is cancelled, then writes what is left and releases every waiter.
    func run() async {
        for await _ in self.wakeups {
            await self.writeBuffered()
        }
        await self.writeBuffered()
        let waiters = self.state.withLock { state in
            state.finished = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.continuation.resume() }
    }

    /// Stops ``run()`` after its last write.
    func finish() {
        self.wakeupContinuation.finish()
    }

    private func writeBuffered() async {
        while true {
            let batch = self.state.withLock { state -> [DeliveryMark] in
                let count = min(state.buffer.count, self.maxBatch)
                defer { state.buffer.removeFirst(count) }
                return Array(state.buffer.prefix(count))
            }
            guard !batch.isEmpty else { return }
            do {
                try await self.store.markDelivered(batch)
            } catch {
                // The recipients stay pending in the store, so they may get these messages once more (same ids)
                // on their next catch-up; nothing is lost.
                self.logger.warning(
                    "Recording deliveries failed; the recipients may receive these messages again",
                    metadata: ["chat.delivery.count": "\(batch.count)", "error": "\(error)"]
                )
            }
            let ready = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.settled += UInt64(batch.count)
                let settled = state.settled
                let ready = state.waiters.filter { $0.target <= settled }.map(\.continuation)
                state.waiters.removeAll { $0.target <= settled }
                return ready
            }
            for continuation in ready { continuation.resume() }
        }
    }
}
