import Synchronization

/// The engine's monotonic time, for deadlines and durations (acknowledgement timeouts, the presence heartbeat,
/// drain timings); dates come from ``WallClock``.
///
/// Injected so that tests move time forward (``ManualMonotonicClock``) instead of sleeping on a loaded machine.
public protocol MonotonicClock: Sendable {
    /// The time since an origin of the clock's own.
    func now() -> Duration

    /// Returns once the clock reads `deadline` or later (at once if it already does).
    /// - Throws: `CancellationError` when the task is cancelled first.
    func sleep(until deadline: Duration) async throws
}

extension MonotonicClock {
    /// Returns after `duration` of this clock's time.
    public func sleep(for duration: Duration) async throws {
        try await self.sleep(until: self.now() + duration)
    }
}

/// The system's monotonic clock (`ContinuousClock`).
public struct SystemMonotonicClock: MonotonicClock {
    private let origin = ContinuousClock.now

    /// A clock whose origin is now.
    public init() {}

    public func now() -> Duration { ContinuousClock.now - self.origin }

    public func sleep(until deadline: Duration) async throws {
        try await Task.sleep(until: self.origin + deadline, clock: .continuous)
    }
}

/// A monotonic clock that only moves when told to; sleepers wake when ``advance(by:)`` reaches their deadline.
public final class ManualMonotonicClock: MonotonicClock {
    private struct Sleeper {
        var id: UInt64
        var deadline: Duration
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now: Duration = .zero
        var sleepers: [Sleeper] = []
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    /// A clock at zero.
    public init() {}

    public func now() -> Duration { self.state.withLock { $0.now } }

    /// How many tasks are sleeping on this clock (a test can wait for a timer to be set before advancing).
    public var sleeperCount: Int { self.state.withLock { $0.sleepers.count } }

    public func sleep(until deadline: Duration) async throws {
        let id = self.state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome: Result<Void, any Error>? = self.state.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if deadline <= state.now { return .success(()) }
                    state.sleepers.append(Sleeper(id: id, deadline: deadline, continuation: continuation))
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let sleeper = self.state.withLock { state -> Sleeper? in
                guard let index = state.sleepers.firstIndex(where: { $0.id == id }) else { return nil }
                return state.sleepers.remove(at: index)
            }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves the clock forward by `duration` and wakes every sleeper whose deadline has come.
    public func advance(by duration: Duration) {
        let due = self.state.withLock { state -> [Sleeper] in
            state.now += duration
            let now = state.now
            let due = state.sleepers.filter { $0.deadline <= now }
            state.sleepers.removeAll { $0.deadline <= now }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }
}
