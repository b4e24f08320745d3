import Logging
import Synchronization

/// Writes items in batches: confirmed deliveries to the store (`readBy` gains the recipient, the recipient leaves
/// the pending list), delivery events to the queue, receipt events to the webhook's outbox.
///
/// Items recorded while a write is in flight go into the next write (group commit), so the backend sees one
/// write per batch however many items arrive at once, and no timer delays a quiet system.
///
/// A failed write either drops its items (logged), or, with a ``BatchRetention``, keeps them, oldest first and at
/// most `capacity`, and writes them again after a backoff until the backend takes them: an outage of the store
/// delays `readBy` updates and receipt events instead of losing them. Either way memory stays bounded.
final class BatchWriter<Item: Sendable>: Sendable {
    typealias Write = @Sendable ([Item]) async throws -> Void

    private struct State {
        var buffer: [Item] = []
        /// Items whose write failed, oldest first, waiting for another attempt (with a retention only).
        var retained: [Item] = []
        var recorded: UInt64 = 0
        /// How many recorded items had their first attempt (written, kept or dropped).
        var settled: UInt64 = 0
        var waiters: [(target: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        /// Failed attempts since the last write that succeeded.
        var failures = 0
        /// Items dropped over the retention's capacity since the last write that succeeded.
        var droppedInOutage = 0
        var finished = false

        /// Adds items to the kept ones (oldest first already) and drops the oldest over `capacity`; returns how
        /// many were dropped.
        mutating func keep(_ items: [Item], capacity: Int) -> Int {
            self.retained.append(contentsOf: items)
            let dropped = max(0, self.retained.count - capacity)
            self.retained.removeFirst(dropped)
            self.droppedInOutage += dropped
            return dropped
        }
    }

    private let write: Write
    private let maxBatch: Int
    private let logger: Logger
    private let subject: String
    private let failureLevel: Logger.Level
    private let retention: BatchRetention?
    private let state = Mutex(State())
    private let wakeups: AsyncStream<Void>
    private let wakeupContinuation: AsyncStream<Void>.Continuation

    /// - Parameters:
    ///   - subject: what the items are, for the operator ("Delivery confirmations (readBy updates)"): the start of each
    ///     log line about them.
    ///   - failureLevel: the level of the line that says a write failed (the first of an outage with a retention).
    ///   - retention: keeps failed items for another attempt; nil drops them.
    init(
        maxBatch: Int,
        logger: Logger,
        subject: String,
        failureLevel: Logger.Level,
        retention: BatchRetention? = nil,
        write: @escaping Write
    ) {
        self.write = write
        self.maxBatch = maxBatch
        self.logger = logger
        self.subject = subject
        self.failureLevel = failureLevel
        self.retention = retention
        (self.wakeups, self.wakeupContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Queues items for the next write; returns at once.
    func record(_ items: [Item]) {
        guard !items.isEmpty else { return }
        let dropped = self.state.withLock { state -> Int in
            state.recorded += UInt64(items.count)
            guard let retention = self.retention, state.failures > 0 else {
                state.buffer.append(contentsOf: items)
                return 0
            }
            // The backend is failing: these wait with the kept ones, within the same bound.
            state.settled += UInt64(items.count)
            return state.keep(items, capacity: retention.capacity)
        }
        if dropped > 0 { self.droppedOverCapacity(dropped) }
        self.wakeupContinuation.yield()
    }

    /// Returns once every item recorded before the call had its first attempt: written, or failed (and then kept
    /// or dropped). While the backend is failing it returns at once: what it waits for would fail too.
    func flush() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if state.settled >= state.recorded || state.finished || state.failures > 0 { return true }
                state.waiters.append((state.recorded, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// How many failed items wait for another attempt.
    var retainedCount: Int {
        self.state.withLock { $0.retained.count }
    }

    /// Writes until the task is cancelled, then makes one last attempt at what is left and releases every waiter.
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

    /// Writes batches until nothing waits. After a failure kept items, it backs off and tries again; cancellation
    /// ends the wait (``run()``'s last pass then tries once more and drops what still fails).
    private func writeBuffered() async {
        let firstDelay = self.retention?.firstDelay ?? .zero
        var delay = firstDelay
        while true {
            let (batch, retainedPart) = self.state.withLock { state -> ([Item], Int) in
                let retainedPart = min(state.retained.count, self.maxBatch)
                var batch = Array(state.retained.prefix(retainedPart))
                state.retained.removeFirst(retainedPart)
                let freshPart = min(state.buffer.count, self.maxBatch - retainedPart)
                batch.append(contentsOf: state.buffer.prefix(freshPart))
                state.buffer.removeFirst(freshPart)
                return (batch, retainedPart)
            }
            guard !batch.isEmpty else { return }
            var keptForLater = false
            do {
                try await self.write(batch)
                self.wrote(retainedPart)
                delay = firstDelay
            } catch {
                keptForLater = self.failed(batch, retainedPart: retainedPart, error: error)
            }
            let ready = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.settled += UInt64(batch.count - retainedPart)
                let settled = state.settled
                let failing = state.failures > 0
                let ready = state.waiters.filter { $0.target <= settled || failing }.map(\.continuation)
                state.waiters.removeAll { $0.target <= settled || failing }
                return ready
            }
            for continuation in ready { continuation.resume() }
            if keptForLater, let retention = self.retention {
                do {
                    try await retention.clock.sleep(for: delay)
                } catch {
                    return
                }
                delay = min(delay * 2, retention.maxDelay)
            }
        }
    }

    /// A write succeeded: ends a failure streak, saying how it went.
    private func wrote(_ retainedPart: Int) {
        let (failures, stillRetained, dropped) = self.state.withLock { state in
            defer {
                state.failures = 0
                state.droppedInOutage = 0
            }
            return (state.failures, state.retained.count, state.droppedInOutage)
        }
        guard failures > 0 else { return }
        self.logger.info(
            "\(self.subject) are being written again",
            metadata: [
                "chat.batch.failed_attempts": "\(failures)",
                "chat.batch.count": "\(retainedPart)",
                "chat.batch.retained": "\(stillRetained)",
                "chat.batch.dropped": "\(dropped)",
            ]
        )
    }

    /// A write failed: keeps the batch, and what was buffered behind it, for another attempt (true) or drops the
    /// batch (false), and says so.
    private func failed(_ batch: [Item], retainedPart: Int, error: any Error) -> Bool {
        guard let retention = self.retention else {
            self.logger.log(
                level: self.failureLevel,
                "\(self.subject) could not be written and are dropped",
                metadata: ["chat.batch.count": "\(batch.count)", "error": "\(error)"]
            )
            return false
        }
        guard retention.isTransient(error), !Task.isCancelled else {
            // Shutting down, or the backend refused these items (another attempt would fail the same way and hold
            // back everything after them).
            self.logger.error(
                "\(self.subject) could not be written and are dropped\(Task.isCancelled ? " at shutdown" : "")",
                metadata: ["chat.batch.count": "\(batch.count)", "error": "\(error)"]
            )
            retention.dropped(batch.count)
            return false
        }
        let (failures, kept, dropped) = self.state.withLock { state -> (Int, Int, Int) in
            state.failures += 1
            // Back in order: the batch's kept items are the oldest, its fresh ones older than anything buffered.
            let older = state.retained
            state.retained = Array(batch.prefix(retainedPart))
            var newer = older
            newer.append(contentsOf: batch.dropFirst(retainedPart))
            newer.append(contentsOf: state.buffer)
            state.settled += UInt64(state.buffer.count)
            state.buffer = []
            let dropped = state.keep(newer, capacity: retention.capacity)
            return (state.failures, state.retained.count, dropped)
        }
        if failures == 1 {
            self.logger.log(
                level: self.failureLevel,
                "\(self.subject) could not be written; kept and written when the store takes them",
                metadata: ["chat.batch.count": "\(batch.count)", "chat.batch.retained": "\(kept)", "error": "\(error)"]
            )
        } else {
            self.logger.debug(
                "\(self.subject) still cannot be written",
                metadata: ["chat.batch.failed_attempts": "\(failures)", "chat.batch.retained": "\(kept)", "error": "\(error)"]
            )
        }
        if dropped > 0 { self.droppedOverCapacity(dropped) }
        return true
    }

    /// Says that kept items were dropped over the capacity: a warning for the first drop of an outage, then
    /// debug lines (the count of the whole outage comes with the line that says writes resumed).
    private func droppedOverCapacity(_ count: Int) {
        guard let retention = self.retention else { return }
        let total = self.state.withLock { $0.droppedInOutage }
        self.logger.log(
            level: total == count ? .warning : .debug,
            "\(self.subject) dropped: more than the limit wait for the store",
            metadata: ["chat.batch.dropped": "\(count)", "chat.batch.limit": "\(retention.capacity)"]
        )
        retention.dropped(count)
    }
}

/// What a ``BatchWriter`` does with the items of a failed write: keeps them for another attempt.
struct BatchRetention: Sendable {
    /// The most items kept; past it the oldest are dropped.
    var capacity: Int
    /// The clock of the backoff between attempts.
    var clock: any MonotonicClock
    /// The wait after the first failed attempt; it doubles with each failure up to `maxDelay`.
    var firstDelay: Duration = .milliseconds(100)
    /// The longest wait between attempts.
    var maxDelay: Duration = .seconds(2)
    /// Whether a write that failed with this error may succeed later (the backend could not be reached); items
    /// of any other failure are dropped.
    var isTransient: @Sendable (any Error) -> Bool
    /// Told how many items were dropped: over `capacity`, refused by the backend, or still failing at shutdown.
    var dropped: @Sendable (Int) -> Void = { _ in }
}
