public import Foundation
import Synchronization

/// The source of wall-clock time for creation dates, TTLs and retention windows.
///
/// Injected everywhere the domain reads the time, so tests move time forward instead of sleeping.
public protocol WallClock: Sendable {
    /// The current time.
    func now() -> Date
}

/// The system's wall clock.
public struct SystemWallClock: WallClock {
    public init() {}
    public func now() -> Date { Date() }
}

/// A wall clock that only moves when told to; for tests of TTLs and retention.
public final class ManualWallClock: WallClock {
    private let current: Mutex<Date>

    /// Creates a clock that reads `start` until advanced.
    public init(start: Date = Date(timeIntervalSince1970: 1_767_693_600)) {
        self.current = Mutex(start)
    }

    public func now() -> Date { self.current.withLock { $0 } }

    /// Moves the clock forward by `interval` seconds.
    public func advance(by interval: TimeInterval) {
        self.current.withLock { $0 += interval }
    }
}
