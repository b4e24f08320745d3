import Metrics

/// The engine's timings, through swift-metrics (a no-op until the application bootstraps a metrics backend).
/// The counters are in ``DeliveryStatistics``.
enum EngineMetrics {
    /// From acceptance of a message to the recipient's confirmation, for live deliveries.
    static let deliveryLatency = Metrics.Timer(label: "chatd_delivery_latency_seconds")
    /// How long a `user:reconnected` drain took, from the event to the last confirmation.
    static let drainDuration = Metrics.Timer(label: "chatd_drain_duration_seconds")
}

extension Duration {
    /// The duration in whole nanoseconds.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = self.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
