import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// The delivery engine: accepts messages, delivers them live or through the offline path, and catches
/// reconnecting users up, through the four ports.
///
/// Transports call ``connect(_:user:)``, ``disconnect(_:)``, ``send(_:from:)`` and ``reconnected(_:)``;
/// ``run()`` must be running (directly or in a `ServiceGroup`) for live confirmations, batched `readBy` writes,
/// dead-letter handling and presence heartbeats.
///
/// Guarantees: a message is confirmed to its sender only once stored; each recipient receives it at least once
/// (deduplicate by `_id`), in acceptance order, whether online, offline or reconnecting; a queue outage or a crash
/// between storing and queueing loses nothing, because every message stays pending in the store for each
/// recipient until a client confirms it.
public actor ChatService: Service {
    /// The ports and helpers the engine works through.
    public struct Dependencies: Sendable {
        public var store: any MessageStore
        public var queue: any MessageQueue
        public var presence: any PresenceStore
        public var transport: any Transport
        public var wallClock: any WallClock
        /// The time deadlines and durations are measured in (acknowledgement timeouts, the presence heartbeat).
        public var clock: any MonotonicClock
        public var idGenerator: MessageIDGenerator
        /// Receives delivery latencies and drain durations (for metrics); none by default.
        public var observer: (any DeliveryObserver)?
        /// Carries live messages to the other nodes that share the presence store; none (a single node) by default.
        public var relay: (any NodeRelay)?
        /// Where receipt events (delivered, read, expired, failed) wait for the receipts webhook; none (no webhook)
        /// by default.
        public var receiptOutbox: (any ReceiptOutbox)?

        /// Bundles the ports; time and ids default to the system's.
        public init(
            store: any MessageStore,
            queue: any MessageQueue,
            presence: any PresenceStore,
            transport: any Transport,
            wallClock: any WallClock = SystemWallClock(),
            clock: any MonotonicClock = SystemMonotonicClock(),
            idGenerator: MessageIDGenerator? = nil,
            observer: (any DeliveryObserver)? = nil,
            relay: (any NodeRelay)? = nil,
            receiptOutbox: (any ReceiptOutbox)? = nil
        ) {
            self.store = store
            self.queue = queue
            self.presence = presence
            self.transport = transport
            self.wallClock = wallClock
            self.clock = clock
            self.idGenerator = idGenerator ?? MessageIDGenerator(clock: wallClock)
            self.observer = observer
            self.relay = relay
            self.receiptOutbox = receiptOutbox
        }
    }

    typealias Job = @Sendable () async -> Void

    let configuration: ChatServiceConfiguration
    let store: any MessageStore
    let queue: any MessageQueue
    let presence: any PresenceStore
    let transport: any Transport
    let relay: (any NodeRelay)?
    let wallClock: any WallClock
    let clock: any MonotonicClock
    let idGenerator: MessageIDGenerator
    let logger: Logger
    let validator: MessageValidator
    let markWriter: BatchWriter<DeliveryMark>
    let observer: (any DeliveryObserver)?
    /// The one timer behind every client acknowledgement's timeout.
    let acknowledgementDeadlines: AcknowledgementDeadlines?
    let eventWriter: BatchWriter<DeliveryEvent>
    /// Receipt events on their way to the webhook's outbox; nil without a webhook.
    let receiptEvents: BatchWriter<ReceiptEvent>?
    /// Live pushes confirmed or not, waiting for the engine's next turn (see `pushSettled`).
    let settlements = Mutex(SettlementBuffer())
    /// Wakes the settlement loop: one signal stands for every settlement buffered until the loop takes them.
    private let settlementSignal: AsyncStream<Void>
    let settlementSignalContinuation: AsyncStream<Void>.Continuation
    private let jobs: AsyncStream<Job>
    private let jobsContinuation: AsyncStream<Job>.Continuation

    var connectionUsers: [ConnectionID: User] = [:]
    var lanes: [UserID: RecipientLane] = [:]
    /// Live messages' copies for recipients also connected to other nodes, per recipient (several nodes).
    var remoteCopies: [UserID: RemoteCopies] = [:]
    var sequencer = SendSequencer<CheckedContinuation<Void, Never>>()
    /// Messages stored and not yet routed. Routing follows id order, so none of them is older than the smallest.
    var unrouted = Set<MessageID>()
    var enqueueIdleWaiters: [UserID: [CheckedContinuation<Void, Never>]] = [:]
    var queueOutage = OutageTracker()
    var presenceOutage = OutageTracker()
    var relayOutage = OutageTracker()
    var storeOutage = OutageTracker()
    var statistics = DeliveryStatistics()
    var sendLimiter: KeyedRateLimiter<UserID>?
    var typingLimiter: KeyedRateLimiter<ConnectionID>
    /// Connections told once that they send typing events too fast (the rest of the flood is dropped silently).
    var typingFloods = Set<ConnectionID>()
    /// Who types where, until when (on ``clock``).
    var typingDeadlines: [TypingKey: Duration] = [:]
    /// Wakes the typing expiry loop when a first indicator starts.
    let typingSweepSignals: AsyncStream<Void>
    let typingSweepSignal: AsyncStream<Void>.Continuation
    var fanOutLimiter: KeyedRateLimiter<UserID>?

    /// Creates the engine.
    /// - Throws: ``ChatError`` with code ``ChatError/Code/badRequest`` naming a setting that is out of range.
    public init(
        configuration: ChatServiceConfiguration = .init(),
        dependencies: Dependencies,
        logger: Logger
    ) throws(ChatError) {
        try configuration.validate()
        self.configuration = configuration
        self.store = dependencies.store
        self.queue = dependencies.queue
        self.presence = dependencies.presence
        self.transport = dependencies.transport
        self.relay = dependencies.relay
        self.wallClock = dependencies.wallClock
        self.clock = dependencies.clock
        self.idGenerator = dependencies.idGenerator
        self.observer = dependencies.observer
        self.logger = logger
        self.validator = MessageValidator(
            maxContentBytes: configuration.maxContentBytes,
            allowedMessageTypes: configuration.allowedMessageTypes,
            reservesSealedPrefix: configuration.encryption != nil
        )
        if case .clientAcknowledgement(let timeout) = configuration.deliveryConfirmation {
            self.acknowledgementDeadlines = AcknowledgementDeadlines(timeout: timeout, clock: dependencies.clock)
        } else {
            self.acknowledgementDeadlines = nil
        }
        let store = dependencies.store
        let clock = dependencies.clock
        self.markWriter = BatchWriter(
            maxBatch: configuration.maxDeliveryMarkBatch,
            logger: logger,
            // Dropped ones leave their recipients pending in the store, so they may get these messages once more
            // (same ids) on their next catch-up; nothing is lost.
            subject: "Delivery confirmations (readBy updates)",
            failureLevel: .warning,
            retention: BatchRetention(capacity: configuration.maxRetainedWrites, clock: clock, isTransient: Self.isUnreachable),
            write: { try await store.markDelivered($0) }
        )
        let queue = dependencies.queue
        self.eventWriter = BatchWriter(
            maxBatch: configuration.maxDeliveryMarkBatch,
            logger: logger,
            subject: "Delivery events for analytics",
            failureLevel: .debug,
            write: { try await queue.publishDeliveryEvents($0) }
        )
        if let outbox = dependencies.receiptOutbox {
            let engineLogger = logger
            let observer = dependencies.observer
            self.receiptEvents = BatchWriter(
                maxBatch: configuration.maxDeliveryMarkBatch,
                logger: logger,
                subject: "Receipt events for the webhook",
                failureLevel: .warning,
                retention: BatchRetention(
                    capacity: configuration.maxRetainedWrites,
                    clock: clock,
                    isTransient: Self.isUnreachable,
                    dropped: { observer?.receiptEventsNotWritten($0) }
                ),
                write: { events in
                    let dropped = try await outbox.append(events)
                    if dropped > 0 {
                        engineLogger.warning(
                            "Receipts webhook outbox full; oldest events dropped",
                            metadata: ["webhook.dropped": "\(dropped)", "webhook.outbox_capacity": "\(outbox.capacity)"]
                        )
                        observer?.receiptEventsDropped(dropped)
                    }
                }
            )
        } else {
            self.receiptEvents = nil
        }
        self.typingLimiter = KeyedRateLimiter(limit: configuration.typingRateLimit)
        (self.typingSweepSignals, self.typingSweepSignal) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        (self.jobs, self.jobsContinuation) = AsyncStream.makeStream()
        (self.settlementSignal, self.settlementSignalContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        self.sendLimiter = configuration.sendRateLimit.map { KeyedRateLimiter(limit: $0) }
        self.fanOutLimiter = configuration.fanOutRateLimit.map { KeyedRateLimiter(limit: $0) }
    }

    /// Runs the engine's background work until graceful shutdown or cancellation; then confirmations still
    /// outstanding are handed to the offline path and pending `readBy` writes are flushed.
    public func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.markWriter.run() }
            if let deadlines = self.acknowledgementDeadlines {
                group.addTask { await deadlines.run() }
            }
            group.addTask { await self.eventWriter.run() }
            if let receiptEvents = self.receiptEvents {
                group.addTask { await receiptEvents.run() }
            }
            group.addTask { await self.typingExpiryLoop() }
            group.addTask { await self.consumeDeadLetters() }
            group.addTask { await self.heartbeatLoop() }
            group.addTask { await self.settlementLoop() }
            group.addTask { await self.readRelayInbox() }
            group.addTask { await self.janitorLoop() }
            await withGracefulShutdownHandler {
                await withTaskCancellationHandler {
                    for await job in self.jobs {
                        group.addTask { await job() }
                    }
                } onCancel: {
                    self.jobsContinuation.finish()
                    self.settlementSignalContinuation.finish()
                    self.typingSweepSignal.finish()
                }
            } onGracefulShutdown: {
                self.jobsContinuation.finish()
                self.settlementSignalContinuation.finish()
                self.typingSweepSignal.finish()
            }
            // Outstanding confirmations fail on cancellation and hand their messages to the offline path.
            group.cancelAll()
        }
        // No job runs any more: the settlements that came last (acknowledgements failed by the shutdown) are
        // applied here, their enqueue flushers included.
        await self.applySettlements()
        self.markWriter.finish()
        self.eventWriter.finish()
        self.receiptEvents?.finish()
    }

    /// Applies buffered settlements whenever signalled, on the engine's actor: one wake-up for every settlement
    /// that arrived since the last pass, without a task per batch.
    private func settlementLoop() async {
        for await _ in self.settlementSignal {
            await self.applySettlements()
        }
    }

    /// Records confirmed deliveries: `readBy` writes (batched), `delivered` events, and receipt events for the
    /// webhook.
    func recordDelivered(_ messages: [Message], to user: UserID) {
        let now = self.wallClock.now()
        self.markWriter.record(messages.map { DeliveryMark(messageID: $0.id, userID: user, at: now) })
        self.eventWriter.record(messages.map { DeliveryEvent(messageID: $0.id, userID: user, status: .delivered, timestamp: now) })
        self.receiptEvents?.record(messages.map {
            ReceiptEvent(id: self.idGenerator.next(), kind: .delivered, messageID: $0.id, chatID: $0.chatID, userID: user, at: now)
        })
    }

    /// Counters of what the engine did since it started.
    public func currentStatistics() -> DeliveryStatistics {
        self.statistics
    }

    /// The engine's view of its backing services.
    public func health() -> HealthReport {
        HealthReport(
            store: self.storeOutage.isDown ? .down : .ok,
            queue: self.queueOutage.isDown ? .degraded : .ok,
            presence: self.presenceOutage.isDown ? .degraded : .ok
        )
    }

    /// The connections of `user` on this node.
    public func connections(of user: UserID) -> [ConnectionID] {
        self.lanes[user]?.connections ?? []
    }

    /// Runs `job` in ``run()``'s task group; false when the engine is shutting down and the job will not run.
    @discardableResult
    nonisolated func submit(_ job: @escaping Job) -> Bool {
        if case .terminated = self.jobsContinuation.yield(job) {
            // Shutting down: the job's work is left to run()'s last step, or, at worst, to the recipient's next
            // catch-up (every message stays pending in the store until confirmed).
            self.logger.debug("Engine is shutting down; work left to the shutdown or the next catch-up")
            return false
        }
        return true
    }

    func removeLaneIfIdle(_ user: UserID) {
        if self.lanes[user]?.isIdle == true {
            self.lanes[user] = nil
        }
    }
}

/// A live push's outcome, waiting to be applied to its recipient's lane.
struct PushSettlement: Sendable {
    var messageID: MessageID
    var recipient: UserID
    var confirmed: Bool
}

/// Settlements buffered between engine turns; `scheduled` while the settlement loop has been signalled and not yet
/// taken them.
struct SettlementBuffer: Sendable {
    var items: [PushSettlement] = []
    var scheduled = false
}
