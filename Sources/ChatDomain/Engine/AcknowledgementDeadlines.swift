import DequeModule
import Synchronization

/// Fails acknowledgements that are still pending after the engine's timeout, with one timer for all of them.
///
/// Every acknowledgement gets the same timeout, so deadlines arrive in registration order and a FIFO holds them.
/// The sweeper wakes at most every `slack` and fails what is overdue (failing a completed acknowledgement does
/// nothing), instead of a sleeping task and a timer per delivered message.
final class AcknowledgementDeadlines: Sendable {
    private struct State {
        var pending: Deque<(deadline: Duration, acknowledgement: Acknowledgement)> = []
        var idle: CheckedContinuation<Void, Never>?
        var finished = false
    }

    let timeout: Duration
    private let slack: Duration
    private let clock: any MonotonicClock
    private let state = Mutex(State())

    init(timeout: Duration, clock: any MonotonicClock) {
        self.timeout = timeout
        self.clock = clock
        self.slack = min(max(timeout / 20, .milliseconds(5)), .milliseconds(100))
    }

    /// Starts the clock of `acknowledgement`.
    func register(_ acknowledgement: Acknowledgement) {
        let deadline = self.clock.now() + self.timeout
        let (idle, finished) = self.state.withLock { state in
            state.pending.append((deadline, acknowledgement))
            defer { state.idle = nil }
            return (state.idle, state.finished)
        }
        if finished { acknowledgement.fail(ChatError(.timeout, "the engine is shutting down")) }
        idle?.resume()
    }

    /// Fails overdue acknowledgements until cancelled; then fails every pending one.
    func run() async {
        while !Task.isCancelled {
            let head: Duration? = self.state.withLock { $0.pending.first?.deadline }
            if let head {
                try? await self.clock.sleep(until: head + self.slack)
                self.failOverdue(now: self.clock.now())
            } else {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        let resumeNow = self.state.withLock { state -> Bool in
                            guard state.pending.isEmpty, !Task.isCancelled else { return true }
                            state.idle = continuation
                            return false
                        }
                        if resumeNow { continuation.resume() }
                    }
                } onCancel: {
                    self.state.withLock { state in defer { state.idle = nil }; return state.idle }?.resume()
                }
            }
        }
        let rest = self.state.withLock { state in
            state.finished = true
            defer { state.pending = [] }
            return state.pending
        }
        for entry in rest { entry.acknowledgement.fail(ChatError(.timeout, "the engine is shutting down")) }
    }

    private func failOverdue(now: Duration) {
        let overdue = self.state.withLock { state in
            var overdue: [Acknowledgement] = []
            while let first = state.pending.first, first.deadline <= now {
                overdue.append(first.acknowledgement)
                state.pending.removeFirst()
            }
            return overdue
        }
        for acknowledgement in overdue {
            acknowledgement.fail(ChatError(.timeout, "the client did not acknowledge in time"))
        }
    }
}
