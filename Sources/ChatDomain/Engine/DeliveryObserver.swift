/// Receives the engine's timings, for metrics; the engine calls it inline, so keep it cheap and non-blocking.
///
/// The counters are in ``DeliveryStatistics``; this carries what a counter cannot: distributions.
public protocol DeliveryObserver: Sendable {
    /// A live delivery was confirmed `latency` after the message was accepted.
    func delivered(latency: Duration)
    /// A `user:reconnected` drain delivered `messages` in `duration`.
    func drained(messages: Int, duration: Duration)

    /// The receipts webhook's outbox was full and dropped its `count` oldest events.
    func receiptEventsDropped(_ count: Int)

    /// `count` receipt events never reached the outbox: the store could not take them (more than
    /// ``ChatServiceConfiguration/maxRetainedWrites`` waited through an outage, the outage lasted until shutdown,
    /// or the store refused them).
    func receiptEventsNotWritten(_ count: Int)
}

extension DeliveryObserver {
    /// Ignores drops: for observers that do not count them.
    public func receiptEventsDropped(_ count: Int) {}

    /// Ignores events lost before the outbox: for observers that do not count them.
    public func receiptEventsNotWritten(_ count: Int) {}
}
