import ChatDomain
import ChatTransport
import Metrics
import ServiceLifecycle

/// The engine's timings as Prometheus histograms (through swift-metrics).
struct MetricsObserver: DeliveryObserver {
    let latency: Metrics.Timer
    let drain: Metrics.Timer
    let outboxFull: Counter
    let notWritten: Counter

    init(factory: any MetricsFactory) {
        self.latency = Metrics.Timer(label: "chatd_delivery_latency_seconds", factory: factory)
        self.drain = Metrics.Timer(label: "chatd_drain_duration_seconds", factory: factory)
        self.outboxFull = Counter(label: "chatd_webhook_events_dropped_total", dimensions: [("reason", "outbox_full")], factory: factory)
        self.notWritten = Counter(label: "chatd_webhook_events_dropped_total", dimensions: [("reason", "not_written")], factory: factory)
    }

    func delivered(latency: Duration) { self.latency.recordNanoseconds(latency.wholeNanoseconds) }
    func drained(messages: Int, duration: Duration) { self.drain.recordNanoseconds(duration.wholeNanoseconds) }
    func receiptEventsDropped(_ count: Int) { self.outboxFull.increment(by: count) }
    func receiptEventsNotWritten(_ count: Int) { self.notWritten.increment(by: count) }
}


/// Publishes the engine's counters and the connection count as Prometheus metrics, once a second.
struct StatisticsExporter: Service {
    let service: ChatService
    let socketIO: SocketIOServer
    let factory: any MetricsFactory
    /// With several nodes: the ready entries in this node's inbox (nil when unknown).
    var inboxDepth: (@Sendable () async -> Int?)?

    func run() async throws {
        let sent = Counter(label: "chatd_messages_sent_total", factory: self.factory)
        let deliveredLive = Counter(label: "chatd_messages_delivered_total", dimensions: [("path", "live")], factory: self.factory)
        let deliveredQueue = Counter(label: "chatd_messages_delivered_total", dimensions: [("path", "queue")], factory: self.factory)
        let deliveredStore = Counter(label: "chatd_messages_delivered_total", dimensions: [("path", "store")], factory: self.factory)
        let queued = Counter(label: "chatd_messages_queued_total", factory: self.factory)
        let queueRejected = Counter(label: "chatd_messages_queue_rejected_total", factory: self.factory)
        let failed = Counter(label: "chatd_messages_failed_total", factory: self.factory)
        let expired = Counter(label: "chatd_messages_expired_total", factory: self.factory)
        let unconfirmed = Counter(label: "chatd_messages_unconfirmed_total", factory: self.factory)
        let rejected = Counter(label: "chatd_sends_rejected_total", factory: self.factory)
        let forwarded = Counter(label: "chatd_messages_forwarded_total", dimensions: [("direction", "out")], factory: self.factory)
        let relayedIn = Counter(label: "chatd_messages_forwarded_total", dimensions: [("direction", "in")], factory: self.factory)
        let relayRefused = Counter(label: "chatd_messages_forwarded_total", dimensions: [("direction", "refused")], factory: self.factory)
        let inbox = Gauge(label: "chatd_node_inbox_ready", factory: self.factory)
        let janitorMoved = Counter(label: "chatd_janitor_moved_total", factory: self.factory)
        let nodesCleanedUp = Counter(label: "chatd_janitor_nodes_cleaned_up_total", factory: self.factory)
        let readMarks = Counter(label: "chatd_read_marks_total", factory: self.factory)
        let sockets = Gauge(label: "chatd_connected_sockets", factory: self.factory)
        let sessions = Gauge(label: "chatd_engineio_sessions", factory: self.factory)
        let backlog = Gauge(label: "chatd_queue_backlog_estimate", factory: self.factory)
        let health = Gauge(label: "chatd_component_up", dimensions: [("component", "store")], factory: self.factory)
        let queueHealth = Gauge(label: "chatd_component_up", dimensions: [("component", "queue")], factory: self.factory)
        let presenceHealth = Gauge(label: "chatd_component_up", dimensions: [("component", "presence")], factory: self.factory)
        await cancelWhenGracefulShutdown {
            var last = DeliveryStatistics()
            while !Task.isCancelled {
                let now = await self.service.currentStatistics()
                sent.increment(by: now.messagesSent - last.messagesSent)
                deliveredLive.increment(by: now.deliveredLive - last.deliveredLive)
                deliveredQueue.increment(by: now.deliveredFromQueue - last.deliveredFromQueue)
                deliveredStore.increment(by: now.deliveredFromStore - last.deliveredFromStore)
                queued.increment(by: now.queued - last.queued)
                queueRejected.increment(by: now.queueRejected - last.queueRejected)
                failed.increment(by: now.failed - last.failed)
                expired.increment(by: now.expired - last.expired)
                unconfirmed.increment(by: now.unconfirmedLive - last.unconfirmedLive)
                rejected.increment(by: now.rejectedSends - last.rejectedSends)
                forwarded.increment(by: now.forwarded - last.forwarded)
                relayedIn.increment(by: now.relayedIn - last.relayedIn)
                relayRefused.increment(by: now.relayRefused - last.relayRefused)
                janitorMoved.increment(by: now.janitorMoved - last.janitorMoved)
                nodesCleanedUp.increment(by: now.nodesCleanedUp - last.nodesCleanedUp)
                readMarks.increment(by: now.readMarks - last.readMarks)
                last = now
                sockets.record(self.socketIO.connectionCount)
                sessions.record(self.socketIO.sessionCount)
                // Entries this process queued and has not seen delivered, expired or dead-lettered since it started.
                backlog.record(max(0, now.queued - now.deliveredFromQueue - now.expired - now.failed))
                let report = await self.service.health()
                health.record(report.store == .ok ? 1 : 0)
                queueHealth.record(report.queue == .ok ? 1 : 0)
                presenceHealth.record(report.presence == .ok ? 1 : 0)
                if let inboxDepth = self.inboxDepth, let ready = await inboxDepth() { inbox.record(ready) }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
