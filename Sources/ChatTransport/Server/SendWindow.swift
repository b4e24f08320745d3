import DequeModule
import Synchronization

/// How many of one session's `message:send`s may be in flight at once (see
/// ``SocketIOConfiguration/maxSendsInFlight``): the session's reader waits in ``acquire()`` for a free place, so a
/// client that sends faster than its messages are stored is slowed down, not buffered without bound.
final class SendWindow: Sendable {
    private struct State {
        var free: Int
        var waiters: Deque<CheckedContinuation<Void, Never>> = []
    }

    private let state: Mutex<State>

    init(size: Int) {
        self.state = Mutex(State(free: max(1, size)))
    }

    /// Returns once a place is free, and takes it.
    func acquire() async {
        let taken = self.state.withLock { state -> Bool in
            guard state.free > 0 else { return false }
            state.free -= 1
            return true
        }
        if taken { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if state.free > 0 {
                    state.free -= 1
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Gives a place back: to the first waiter, if any.
    func release() {
        let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiters.popFirst() { return waiter }
            state.free += 1
            return nil
        }
        waiter?.resume()
    }
}
