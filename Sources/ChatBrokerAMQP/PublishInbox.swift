import ChatAdapterSupport

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

/// Publish requests waiting for the connection's thread, and whether a pump is scheduled to take them: the pump
/// is ``AMQPConnection/pump(_:reschedule:)``, on the connection's thread.
typealias PublishInbox = PumpQueue<PublishRequest>

extension PumpQueue<PublishRequest> {
    /// Fails every waiting request (the connection's thread is gone) and schedules no more pumps.
    func failAll(_ error: AMQPQueueError) {
        for request in self.takeAll() { request.complete(.failure(error)) }
    }
}
