import Synchronization

/// A client's acknowledgement of one emitted event: the transport completes it once, the engine waits for it.
///
/// Completing it a second time does nothing, so a late ack after a timeout is harmless.
public final class Acknowledgement: Sendable {
    private enum State {
        case pending(CheckedContinuation<Void, any Error>?)
        case done(Result<Void, ChatError>)
    }

    private let state = Mutex<State>(.pending(nil))
    private let onCompletion: (@Sendable (_ acknowledged: Bool) -> Void)?

    /// Creates a pending acknowledgement.
    public init() {
        self.onCompletion = nil
    }

    /// Creates a pending acknowledgement that calls `onCompletion` once, when it completes, with whether the client
    /// acknowledged; it runs on the completing thread, so it must be short.
    public init(onCompletion: @escaping @Sendable (_ acknowledged: Bool) -> Void) {
        self.onCompletion = onCompletion
    }

    /// The client acknowledged.
    public func succeed() {
        self.complete(.success(()))
    }

    /// The event will never be acknowledged (connection closed, write failed, timed out).
    public func fail(_ error: ChatError) {
        self.complete(.failure(error))
    }

    /// Whether the acknowledgement has completed.
    public var isCompleted: Bool {
        self.succeeded != nil
    }

    /// `true` once acknowledged, `false` once failed, nil while pending.
    public var succeeded: Bool? {
        self.state.withLock { state in
            switch state {
            case .pending: nil
            case .done(.success): true
            case .done(.failure): false
            }
        }
    }

    /// Waits for completion; throws the failure. One task at a time may wait.
    public func wait() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let result = self.state.withLock { state -> Result<Void, ChatError>? in
                switch state {
                case .pending:
                    state = .pending(continuation)
                    return nil
                case .done(let result):
                    return result
                }
            }
            if let result { continuation.resume(with: result) }
        }
    }

    /// Waits for completion; when the waiting task is cancelled, fails the acknowledgement (as timed out) so the
    /// waiter returns at once.
    public func waitFailingOnCancellation() async throws {
        try await withTaskCancellationHandler {
            try await self.wait()
        } onCancel: {
            self.fail(ChatError(.timeout, "the wait for the acknowledgement was cancelled"))
        }
    }

    /// Waits for completion for at most `timeout`; fails with ``ChatError/Code/timeout`` after that, or when the
    /// waiting task is cancelled.
    public func wait<C: Clock>(timeout: C.Duration, clock: C) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // Cancelled as soon as the wait below ends; a cancelled sleep still fails a pending ack, which
                // is what a cancelled wait should see.
                try? await clock.sleep(for: timeout)
                self.fail(ChatError(.timeout, "the client did not acknowledge in time"))
            }
            defer { group.cancelAll() }
            try await self.wait()
        }
    }

    private func complete(_ result: Result<Void, ChatError>) {
        let (completed, continuation) = self.state.withLock { state -> (Bool, CheckedContinuation<Void, any Error>?) in
            guard case .pending(let continuation) = state else { return (false, nil) }
            state = .done(result)
            return (true, continuation)
        }
        guard completed else { return }
        continuation?.resume(with: result)
        if let onCompletion {
            if case .success = result { onCompletion(true) } else { onCompletion(false) }
        }
    }
}
