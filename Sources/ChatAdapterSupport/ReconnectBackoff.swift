/// When an adapter may try to reconnect: at once the first time, then after a wait that doubles from
/// ``Configuration/initial`` up to ``Configuration/maximum`` with each failed attempt, and at once again after a
/// success. Pure: the caller passes the time.
public struct ReconnectBackoff: Sendable {
    /// How long to wait between attempts. One shape for every adapter.
    public struct Configuration: Sendable, Hashable {
        /// The first wait after a failed attempt.
        public var initial: Duration
        /// The longest wait.
        public var maximum: Duration

        /// A backoff from `initial` doubling up to `maximum`.
        public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(5)) {
            self.initial = initial
            self.maximum = maximum
        }
    }

    /// The settings.
    public let configuration: Configuration
    private var wait: Duration
    private var nextAttempt: ContinuousClock.Instant?

    /// A backoff that allows an attempt at once.
    public init(_ configuration: Configuration) {
        self.configuration = configuration
        self.wait = configuration.initial
    }

    /// How long until the next attempt may be made at `now`; nil when it may be made now.
    public func remaining(at now: ContinuousClock.Instant) -> Duration? {
        guard let nextAttempt, now < nextAttempt else { return nil }
        return nextAttempt - now
    }

    /// An attempt failed at `now`: the next waits, and the wait after it doubles.
    public mutating func failed(at now: ContinuousClock.Instant) {
        self.nextAttempt = now + self.wait
        self.wait = min(self.wait * 2, self.configuration.maximum)
    }

    /// An attempt succeeded: the next failure waits ``Configuration/initial`` again.
    public mutating func succeeded() {
        self.wait = self.configuration.initial
        self.nextAttempt = nil
    }
}
