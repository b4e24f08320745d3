import Foundation
public import Logging
public import ServiceLifecycle

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
        public var idGenerator: MessageIDGenerator

        /// Bundles the ports; time and ids default to the system's.
        public init(
            store: any MessageStore,
            queue: any MessageQueue,
            presence: any PresenceStore,
            transport: any Transport,
            wallClock: any WallClock = SystemWallClock(),
            idGenerator: MessageIDGenerator? = nil
        ) {
            self.store = store
            self.queue = queue
            self.presence = presence
            self.transport = transport
            self.wallClock = wallClock
            self.idGenerator = idGenerator ?? MessageIDGenerator(clock: wallClock)
        }
    }

    typealias Job = @Sendable () async -> Void

    let configuration: ChatServiceConfiguration
    let store: any MessageStore
    let queue: any MessageQueue
    let presence: any PresenceStore
    let transport: any Transport
    let wallClock: any WallClock
    let idGenerator: MessageIDGenerator
    let logger: Logger
    let validator: MessageValidator
    let markWriter: DeliveryMarkWriter
    private let jobs: AsyncStream<Job>
    private let jobsContinuation: AsyncStream<Job>.Continuation

    var connectionUsers: [ConnectionID: User] = [:]
    var lanes: [UserID: RecipientLane] = [:]
    var sequencer = SendSequencer<CheckedContinuation<Void, Never>>()
    var enqueueIdleWaiters: [UserID: [CheckedContinuation<Void, Never>]] = [:]
    var queueOutage = OutageTracker()
    var presenceOutage = OutageTracker()
    var storeOutage = OutageTracker()
    var statistics = DeliveryStatistics()

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
        self.wallClock = dependencies.wallClock
        self.idGenerator = dependencies.idGenerator
        self.logger = logger
        self.validator = MessageValidator(
            maxContentBytes: configuration.maxContentBytes,
            allowedMessageTypes: configuration.allowedMessageTypes
        )
        self.markWriter = DeliveryMarkWriter(
            store: dependencies.store,
            maxBatch: configuration.maxDeliveryMarkBatch,
            logger: logger
        )
        (self.jobs, self.jobsContinuation) = AsyncStream.makeStream()
    }

    /// Runs the engine's background work until graceful shutdown or cancellation; then confirmations still
    /// outstanding are handed to the offline path and pending `readBy` writes are flushed.
    public func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.markWriter.run() }
            group.addTask { await self.consumeDeadLetters() }
            group.addTask { await self.heartbeatLoop() }
            await withGracefulShutdownHandler {
                await withTaskCancellationHandler {
                    for await job in self.jobs {
                        group.addTask { await job() }
                    }
                } onCancel: {
                    self.jobsContinuation.finish()
                }
            } onGracefulShutdown: {
                self.jobsContinuation.finish()
            }
            // Outstanding confirmations fail on cancellation and hand their messages to the offline path.
            group.cancelAll()
        }
        self.markWriter.finish()
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

    /// Runs `job` in ``run()``'s task group.
    nonisolated func submit(_ job: @escaping Job) {
        if case .terminated = self.jobsContinuation.yield(job) {
            // Shutting down: nobody waits for this confirmation. The message stays pending in the store for its
            // recipient, who is caught up from there on their next reconnect.
            self.logger.debug("Engine is shutting down; confirmation left to the next catch-up")
        }
    }

    func removeLaneIfIdle(_ user: UserID) {
        if self.lanes[user]?.isIdle == true {
            self.lanes[user] = nil
        }
    }
}
