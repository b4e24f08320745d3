import Logging
import Synchronization

/// Writes items in batches: confirmed deliveries to the store (`readBy` gains the recipient, the recipient leaves
/// the pending list), delivery events to the queue.
///
/// Items recorded while a write is in flight go into the next write (group commit), so the backend sees one
/// write per batch however many items arrive at once, and no timer delays a quiet system. A failed write is
/// logged and its items dropped, so the buffer stays bounded by what arrives during one write.
final class BatchWriter<Item: Sendable>: Sendable {
    typealias Write = @Sendable ([Item]) async throws -> Void

    private struct State {
        var buffer: [Item] = []
        var recorded: UInt64 = 0
        var settled: UInt64 = 0
        var waiters: [(target: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        var finished = false
    }

    private let write: Write
    private let maxBatch: Int
    private let logger: Logger
    private let failureMessage: Logger.Message
    private let failureLevel: Logger.Level
    private let state = Mutex(State())
    private let wakeups: AsyncStream<Void>
    private let wakeupContinuation: AsyncStream<Void>.Continuation

    /// - Parameters:
    ///   - failureMessage: what a failed write means for the operator, logged at `failureLevel`.
    init(maxBatch: Int, logger: Logger, failureMessage: Logger.Message, failureLevel: Logger.Level, write: @escaping Write) {
        self.write = write
        self.maxBatch = maxBatch
        self.logger = logger
        self.failureMessage = failureMessage
        self.failureLevel = failureLevel
        (self.wakeups, self.wakeupContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Queues items for the next write; returns at once.
    func record(_ items: [Item]) {
        guard !items.isEmpty else { return }
        self.state.withLock { state in
            state.buffer.append(contentsOf: items)
            state.recorded += UInt64(items.count)
        }
        self.wakeupContinuation.yield()
    }

    /// Returns once every item recorded before the call was written (or its write failed).
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
            let batch = self.state.withLock { state -> [Item] in
                let count = min(state.buffer.count, self.maxBatch)
                defer { state.buffer.removeFirst(count) }
                return Array(state.buffer.prefix(count))
            }
            guard !batch.isEmpty else { return }
            do {
                try await self.write(batch)
            } catch {
                self.logger.log(
                    level: self.failureLevel,
                    self.failureMessage,
                    metadata: ["chat.batch.count": "\(batch.count)", "error": "\(error)"]
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
