import DequeModule
import Synchronization

/// A batch of messages to publish to one routing key, and who to tell once the broker confirmed them all.
struct PublishRequest: Sendable {
    /// Where to: `offline_messages_exchange` and a user id, or the default exchange and `message_delivery`.
    var exchange: String
    var routingKey: String
    /// Whether `routingKey` names a user whose queue the connection declares (and declares again when the
    /// broker returns a publish as unroutable).
    var declaresUserQueue: Bool
    /// Each message's id (the AMQP `message_id`, which a return names) and body.
    var bodies: [(id: String, body: [UInt8])]
    /// Whether this is the one retry of publishes the broker returned.
    var isRetry = false
    /// Whether a publish the broker returns as unroutable counts as refused (reported like a full queue) rather
    /// than failing the request: a node's inbox that does not exist is an answer, not an error.
    var returnsAreRefusals = false
    /// Called once, on the connection's thread: the indexes the broker refused (a full queue), or the failure.
    var complete: @Sendable (Result<Set<Int>, AMQPQueueError>) -> Void
}

/// Publish requests waiting for the connection's thread, and whether a pump is scheduled to take them.
///
/// Callers add requests from any task; the pump (``AMQPConnection/pump(_:reschedule:)``, on the connection's
/// thread) takes them. At most one pump is scheduled at a time: ``add(_:)`` says when a new one is needed.
final class PublishInbox: Sendable {
    private struct State {
        var requests: Deque<PublishRequest> = []
        var scheduled = false
    }

    private let state = Mutex(State())

    /// Queues `request`; true when no pump is scheduled, so the caller must schedule one.
    func add(_ request: PublishRequest) -> Bool {
        self.state.withLock { state in
            state.requests.append(request)
            defer { state.scheduled = true }
            return !state.scheduled
        }
    }

    /// The oldest waiting request, if any.
    func takeFirst() -> PublishRequest? {
        self.state.withLock { $0.requests.popFirst() }
    }

    /// Puts a request taken too early back in front of the others.
    func putBack(_ request: PublishRequest) {
        self.state.withLock { $0.requests.prepend(request) }
    }

    /// Ends the pump's turn when nothing waits (true); otherwise the pump goes on (false).
    func stopIfEmpty() -> Bool {
        self.state.withLock { state in
            guard state.requests.isEmpty else { return false }
            state.scheduled = false
            return true
        }
    }

    /// Fails every waiting request (the connection's thread is gone) and schedules no more pumps.
    func failAll(_ error: AMQPQueueError) {
        let requests = self.state.withLock { state in
            defer {
                state.requests.removeAll()
                state.scheduled = false
            }
            return state.requests
        }
        for request in requests { request.complete(.failure(error)) }
    }
}
