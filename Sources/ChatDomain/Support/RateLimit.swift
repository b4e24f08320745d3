/// A rate with a burst: `rate` units a second on average, up to `burst` at once.
public struct RateLimit: Sendable, Hashable {
    /// Units per second, on average.
    public var rate: Double
    /// The most units available at once (the bucket's size).
    public var burst: Double

    /// A limit of `rate` units a second with bursts of up to `burst`.
    public init(rate: Double, burst: Double) {
        self.rate = rate
        self.burst = burst
    }

    /// Checks the values; the error names `setting`.
    public func validate(_ setting: String) throws(ChatError) {
        guard self.rate > 0, self.rate.isFinite, self.burst >= 1, self.burst.isFinite else {
            throw ChatError(.badRequest, "\(setting) needs a positive rate and a burst of at least 1 (got \(self.rate)/s, burst \(self.burst))")
        }
    }
}

/// A token bucket: pure, with time passed in (seconds on any monotonic scale), so tests move time by hand.
public struct TokenBucket: Sendable, Hashable {
    /// The limit it enforces.
    public let limit: RateLimit
    private var tokens: Double
    private var updatedAt: Double

    /// A full bucket at time `now`.
    public init(limit: RateLimit, now: Double) {
        self.limit = limit
        self.tokens = limit.burst
        self.updatedAt = now
    }

    /// Takes `cost` units at `now`; returns nil when they were available, else the seconds until they will be
    /// (nothing is taken then). A cost above the burst is charged as a whole burst, so it can pass once full.
    public mutating func take(_ cost: Double = 1, now: Double) -> Double? {
        self.refill(now: now)
        let cost = min(cost, self.limit.burst)
        guard self.tokens >= cost else { return (cost - self.tokens) / self.limit.rate }
        self.tokens -= cost
        return nil
    }

    /// Whether the bucket is full at `now` (an idle key whose state can be forgotten).
    public mutating func isFull(now: Double) -> Bool {
        self.refill(now: now)
        return self.tokens >= self.limit.burst
    }

    private mutating func refill(now: Double) {
        if now > self.updatedAt {
            self.tokens = min(self.limit.burst, self.tokens + (now - self.updatedAt) * self.limit.rate)
            self.updatedAt = now
        }
    }
}

/// A token bucket per key (a user, a remote address), pure like ``TokenBucket``. Buckets that have refilled are
/// forgotten as new keys arrive, so memory follows the number of recently active keys, not every key ever seen.
public struct KeyedRateLimiter<Key: Hashable & Sendable>: Sendable {
    /// The limit each key gets.
    public let limit: RateLimit
    private var buckets: [Key: TokenBucket] = [:]
    private var sweepAt: Int

    /// A limiter giving each key `limit`.
    public init(limit: RateLimit) {
        self.limit = limit
        self.sweepAt = 1024
    }

    /// Takes `cost` units for `key` at `now`; nil when allowed, else the seconds to wait.
    public mutating func take(_ key: Key, cost: Double = 1, now: Double) -> Double? {
        if self.buckets.count >= self.sweepAt {
            self.buckets = self.buckets.filter { _, bucket in
                var bucket = bucket
                return !bucket.isFull(now: now)
            }
            // Amortised: the next sweep waits until the map has doubled again.
            self.sweepAt = max(1024, self.buckets.count * 2)
        }
        return self.buckets[key, default: TokenBucket(limit: self.limit, now: now)].take(cost, now: now)
    }

    /// How many keys are tracked now.
    public var trackedKeys: Int { self.buckets.count }
}
