import DequeModule
import Foundation
import Logging

/// A drain stopped because the client did not confirm a delivery; what is left stays queued or pending.
struct DrainInterrupted: Error {
    var delivered: Int
}

extension ChatService {
    /// Handles `user:reconnected` from `connection`: delivers everything queued or pending for the user as
    /// `message:received` with `isNew: false`, then announces them with `user:online`.
    ///
    /// Queue entries are acknowledged only after the client confirmed them; the first unconfirmed one stops the
    /// drain and it and everything after it stay queued, in order, for the next reconnect. Messages that the
    /// queue never held (queue outage, full queue, crash between storing and queueing) are caught up from the
    /// store afterwards. Messages sent meanwhile queue up behind and are drained in the same call. If a drain is
    /// already running for the user, this returns 0 at once.
    /// - Returns: the number of messages delivered.
    @discardableResult
    public func reconnected(_ connection: ConnectionID) async -> Int {
        guard let user = self.connectionUsers[connection]?.id else { return 0 }
        self.logger.info("User reconnection event received", metadata: ["chat.user.id": "\(user)"])
        guard var snapshot = self.lanes[user]?.beginDrain() else { return 0 }
        let start = ContinuousClock.now
        var delivered = 0
        var alreadyDelivered = Set<MessageID>()
        var interrupted = false
        while true {
            do {
                delivered += try await self.drainQueue(for: user, skipping: &alreadyDelivered)
                delivered += try await self.catchUpFromStore(for: user, skipping: &alreadyDelivered)
            } catch {
                delivered += error.delivered
                interrupted = true
                self.lanes[user]?.drainFailed()
                break
            }
            guard let lane = self.lanes[user], lane.mode == .draining else { break }
            if self.lanes[user]?.finishDrainPass(snapshot: snapshot) == true || self.lanes[user]?.mode != .draining {
                break
            }
            // Messages were routed to the offline path during this pass: let their queue writes land, then look
            // again so none is left behind.
            await self.waitUntilEnqueueIdle(user)
            snapshot = self.lanes[user]?.snapshot ?? snapshot
        }
        self.logger.info(
            "Delivered \(delivered) queued messages to \(user)",
            metadata: [
                "chat.user.id": "\(user)", "chat.message.count": "\(delivered)",
                "chat.drain.interrupted": "\(interrupted)",
                "chat.drain.duration_ms": "\((ContinuousClock.now - start) / .milliseconds(1))",
            ]
        )
        await self.broadcast(.userOnline(PresenceChange(userID: user, timestamp: self.wallClock.now())), about: user)
        self.removeLaneIfIdle(user)
        return delivered
    }

    /// Delivers `user`'s queue with up to ``ChatServiceConfiguration/drainWindow`` messages in flight.
    private func drainQueue(for user: UserID, skipping delivered: inout Set<MessageID>) async throws(DrainInterrupted) -> Int {
        let window = self.configuration.drainWindow
        let consumer: any QueueConsumer
        do {
            consumer = try await self.queue.consumer(for: user, prefetch: window)
            self.queueSucceeded()
        } catch {
            self.queueFailed(error)
            return 0
        }
        var inFlight = Deque<(delivery: QueueDelivery, attempt: DeliveryAttempt)>()
        var count = 0
        do {
            while true {
                while inFlight.count < window, let delivery = try await consumer.next() {
                    let message = delivery.entry.message
                    if delivered.contains(message.id) {
                        // Already caught up from the store in this drain.
                        try await consumer.ack(delivery.tag)
                        continue
                    }
                    let event = OutboundEvent.messageReceived(
                        ReceivedMessage(message: message, sender: delivery.entry.sender, isNew: false)
                    )
                    inFlight.append((delivery, self.emit(event, to: self.connections(of: user))))
                }
                guard let head = inFlight.popFirst() else { break }
                guard await head.attempt.isConfirmed() else {
                    let returned = [head.delivery] + inFlight.map(\.delivery)
                    for delivery in returned {
                        try? await consumer.nack(delivery.tag)
                    }
                    self.statistics.returnedToQueue += returned.count
                    self.logger.warning(
                        "Client did not confirm a caught-up message; the rest stays queued for the next reconnect",
                        metadata: ["chat.user.id": "\(user)", "chat.message.id": "\(head.delivery.entry.message.id)"]
                    )
                    await consumer.close()
                    throw DrainInterrupted(delivered: count)
                }
                try await consumer.ack(head.delivery.tag)
                self.recordDelivered(head.delivery.entry.message.id, to: user)
                delivered.insert(head.delivery.entry.message.id)
                self.statistics.deliveredFromQueue += 1
                count += 1
            }
        } catch let error as DrainInterrupted {
            throw error
        } catch {
            // The queue went away mid-drain: it takes back what was not acknowledged. The store catch-up that
            // follows delivers whatever is still pending.
            self.queueFailed(error)
        }
        await consumer.close()
        return count
    }

    /// Delivers what is still pending for `user` in the store, oldest first, in batches.
    private func catchUpFromStore(for user: UserID, skipping delivered: inout Set<MessageID>) async throws(DrainInterrupted) -> Int {
        // Deliveries confirmed so far must be written first, or the store would hand them out again.
        await self.markWriter.flush()
        let window = self.configuration.drainWindow
        let since = self.wallClock.now().addingTimeInterval(-self.configuration.retention)
        var afterID: MessageID?
        var count = 0
        while true {
            let batch: [Message]
            var senders: [UserID: User] = [:]
            do {
                batch = try await self.store.pendingMessages(
                    for: user,
                    createdSince: since,
                    afterID: afterID,
                    limit: self.configuration.catchUpBatchSize
                )
                if !batch.isEmpty {
                    senders = try await self.store.users(Array(Set(batch.map(\.senderID))))
                }
                self.storeSucceeded()
            } catch {
                self.storeFailed(error)
                self.logger.warning(
                    "Catch-up from the store failed; pending messages will be delivered on the next reconnect",
                    metadata: ["chat.user.id": "\(user)", "error": "\(error)"]
                )
                return count
            }
            var inFlight = Deque<(message: Message, attempt: DeliveryAttempt)>()
            var remaining = batch.filter { !delivered.contains($0.id) }[...]
            while true {
                while inFlight.count < window, let message = remaining.popFirst() {
                    let sender = senders[message.senderID] ?? User(id: message.senderID, username: message.senderID.rawValue)
                    let event = OutboundEvent.messageReceived(ReceivedMessage(message: message, sender: sender, isNew: false))
                    inFlight.append((message, self.emit(event, to: self.connections(of: user))))
                }
                guard let head = inFlight.popFirst() else { break }
                guard await head.attempt.isConfirmed() else {
                    self.logger.warning(
                        "Client did not confirm a caught-up message; the rest stays pending for the next reconnect",
                        metadata: ["chat.user.id": "\(user)", "chat.message.id": "\(head.message.id)"]
                    )
                    throw DrainInterrupted(delivered: count)
                }
                self.recordDelivered(head.message.id, to: user)
                delivered.insert(head.message.id)
                self.statistics.deliveredFromStore += 1
                count += 1
            }
            guard batch.count == self.configuration.catchUpBatchSize, let last = batch.last else { break }
            afterID = last.id
        }
        if count > 0 {
            self.logger.info(
                "Caught up messages from the store that the queue did not hold",
                metadata: ["chat.user.id": "\(user)", "chat.message.count": "\(count)"]
            )
        }
        return count
    }

    private func recordDelivered(_ messageID: MessageID, to user: UserID) {
        self.markWriter.record([DeliveryMark(messageID: messageID, userID: user, at: self.wallClock.now())])
    }

    /// Records the outcome of every entry the queue dead-letters, for the receipts API and the counters.
    func consumeDeadLetters() async {
        for await deadLetter in self.queue.deadLetters() {
            await self.handleDeadLetter(deadLetter)
        }
    }

    private func handleDeadLetter(_ deadLetter: DeadLetter) async {
        let entry = deadLetter.entry
        let metadata: Logger.Metadata = [
            "chat.user.id": "\(entry.recipient)", "chat.message.id": "\(entry.message.id)",
            "amqp.dead_letter.reason": "\(deadLetter.reason)",
        ]
        let status: DeliveryStatus
        switch deadLetter.reason {
        case .expired:
            self.statistics.expired += 1
            status = .expired
        case .rejected:
            // Counted when the enqueue was refused; the message is still pending in the store.
            return
        default:
            self.statistics.failed += 1
            status = .failed
        }
        self.logger.info("Queued message dead-lettered", metadata: metadata)
        do {
            try await self.store.recordOutcome(status, messageID: entry.message.id, userID: entry.recipient, at: deadLetter.at)
            self.storeSucceeded()
        } catch {
            self.storeFailed(error)
        }
    }
}
