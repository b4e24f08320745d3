import DequeModule
import Synchronization

/// Requests waiting for one of an adapter's threads, and whether a pump is scheduled to take them: concurrent
/// callers share one visit to the thread (and, where the adapter batches, one command) instead of a hop each.
///
/// Callers ``add(_:)`` from any task; one pump at a time (on the adapter's thread) takes requests until none wait.
/// ``add(_:)`` says when a new pump must be scheduled; the pump's turn ends when ``stopIfEmpty()`` or
/// ``takeBatch(maxCount:maxWeight:weight:)`` finds nothing, in the same step that clears the flag, so a request
/// is never left waiting without a pump.
public final class PumpQueue<Request: Sendable>: Sendable {
    private struct State {
        var requests: Deque<Request> = []
        var scheduled = false
    }

    private let state = Mutex(State())

    /// An empty queue with no pump scheduled.
    public init() {}

    /// Queues `request`; true when no pump is scheduled, so the caller must schedule one.
    public func add(_ request: Request) -> Bool {
        self.state.withLock { state in
            state.requests.append(request)
            defer { state.scheduled = true }
            return !state.scheduled
        }
    }

    /// The oldest waiting request, if any (the pump's turn goes on either way).
    public func takeFirst() -> Request? {
        self.state.withLock { $0.requests.popFirst() }
    }

    /// Puts a request taken too early back in front of the others.
    public func putBack(_ request: Request) {
        self.state.withLock { $0.requests.prepend(request) }
    }

    /// Ends the pump's turn when nothing waits (true); otherwise the pump goes on (false).
    public func stopIfEmpty() -> Bool {
        self.state.withLock { state in
            guard state.requests.isEmpty else { return false }
            state.scheduled = false
            return true
        }
    }

    /// The oldest requests, up to `maxCount` and `maxWeight` as `weight` counts them (at least one); nil when none
    /// wait, which ends the pump's turn.
    public func takeBatch(maxCount: Int, maxWeight: Int = .max, weight: (Request) -> Int = { _ in 1 }) -> [Request]? {
        self.state.withLock { state in
            guard let first = state.requests.popFirst() else {
                state.scheduled = false
                return nil
            }
            var batch = [first]
            var total = weight(first)
            while batch.count < maxCount, let next = state.requests.first, total + weight(next) <= maxWeight {
                total += weight(next)
                batch.append(state.requests.removeFirst())
            }
            return batch
        }
    }

    /// Takes every waiting request (the adapter's threads are gone, so the caller fails them) and schedules no more
    /// pumps.
    public func takeAll() -> [Request] {
        self.state.withLock { state in
            defer {
                state.requests.removeAll()
                state.scheduled = false
            }
            return Array(state.requests)
        }
    }
}
