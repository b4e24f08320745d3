import Synchronization

/// Decides which refusals get a log line: at most one a second per kind, carrying how many refusals it stands for,
/// so a flood writes one line a second instead of one per refused request.
final class RefusalLog: Sendable {
    private let last = Mutex<[String: (at: ContinuousClock.Instant, suppressed: Int)]>([:])

    /// The number of refusals of `kind` the caller's line stands for (this one and those not logged since the
    /// last line), or nil when a line for `kind` was written less than a second ago.
    func admit(_ kind: String, now: ContinuousClock.Instant = .now) -> Int? {
        self.last.withLock { log in
            if let previous = log[kind], now - previous.at < .seconds(1) {
                log[kind]?.suppressed += 1
                return nil
            }
            defer { log[kind] = (now, 0) }
            return (log[kind]?.suppressed ?? 0) + 1
        }
    }
}
