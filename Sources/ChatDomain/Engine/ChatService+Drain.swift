import DequeModule
import Foundation
import Logging

/// A drain stopped because the client did not confirm a delivery; what is left stays queued or pending.
struct DrainInterrupted: Error {
    var delivered: Int
}

/// One caught-up message on its way to the client.
struct CatchUpItem {
    var message: Message
    var sender: User
    /// The queue's handle, for messages that came from the queue.
    var tag: DeliveryTag?
}

/// How a pipelined catch-up run ended.
enum CatchUpEnd {
    /// The source had nothing more.
    case exhausted
    /// The source failed; every in-flight message was still settled with the client.
    case sourceFailed(any Error)
    /// The client did not confirm the first of these; none of them counts as delivered.
    case unconfirmed([CatchUpItem])
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
        guard self.lanes[user]?.beginDrain() == true else { return 0 }
        let start = self.clock.now()
        var delivered = 0
        var alreadyDelivered = Set<MessageID>()
        var interrupted = false
        while self.lanes[user]?.mode == .draining {
            // Start a pass only once every message routed to the offline path has landed in the queue; messages
            // routed during the pass make the pass end without going live, and another pass follows.
            guard let snapshot = self.lanes[user]?.passSnapshot else {
                await self.waitUntilEnqueueIdle(user)
                continue
            }
            do {
                delivered += try await self.drainQueue(for: user, skipping: &alreadyDelivered)
                delivered += try await self.catchUpFromStore(for: user, skipping: &alreadyDelivered)
            } catch {
                delivered += error.delivered
                interrupted = true
                self.lanes[user]?.drainFailed()
                break
            }
            if self.lanes[user]?.finishDrainPass(snapshot: snapshot) != false { break }
        }
        self.logger.info(
            "Delivered \(delivered) queued messages to \(user)",
            metadata: [
                "chat.user.id": "\(user)", "chat.message.count": "\(delivered)",
                "chat.drain.interrupted": "\(interrupted)",
                "chat.drain.duration_ms": "\((self.clock.now() - start) / .milliseconds(1))",
            ]
        )
        self.observer?.drained(messages: delivered, duration: self.clock.now() - start)
        await self.broadcast(.userOnline(PresenceChange(userID: user, timestamp: self.wallClock.now())), about: user)
        self.removeLaneIfIdle(user)
        return delivered
    }

    /// Delivers `user`'s queue; entries are acknowledged after the client confirmed them.
    private func drainQueue(for user: UserID, skipping delivered: inout Set<MessageID>) async throws(DrainInterrupted) -> Int {
        let consumer: any QueueConsumer
        do {
            consumer = try await self.queue.consumer(for: user, prefetch: self.configuration.drainWindow)
            self.queueSucceeded()
        } catch {
            self.queueFailed(error)
            return 0
        }
        let skip = delivered
        let (ids, end) = await self.deliverPipelined(
            to: user,
            next: {
                while let delivery = try await consumer.next() {
                    // Already caught up from the store in an earlier pass of this drain.
                    if skip.contains(delivery.entry.message.id) {
                        try await consumer.ack(delivery.tag)
                        continue
                    }
                    return CatchUpItem(message: delivery.entry.message, sender: delivery.entry.sender, tag: delivery.tag)
                }
                return nil
            },
            settle: { batch in try await consumer.ack(batch.compactMap(\.tag)) }
        )
        delivered.formUnion(ids)
        self.statistics.deliveredFromQueue += ids.count
        switch end {
        case .exhausted:
            break
        case .sourceFailed(let error):
            // The queue went away mid-drain and takes back what was not acknowledged; the store catch-up that
            // follows delivers whatever is still pending.
            self.queueFailed(error)
        case .unconfirmed(let returned):
            for item in returned {
                if let tag = item.tag { try? await consumer.nack(tag) }
            }
            self.statistics.returnedToQueue += returned.count
            self.logger.warning(
                "Client did not confirm a caught-up message; the rest stays queued for the next reconnect",
                metadata: ["chat.user.id": "\(user)", "chat.message.id": "\(returned.first?.message.id.hexString ?? "")"]
            )
            await consumer.close()
            throw DrainInterrupted(delivered: ids.count)
        }
        await consumer.close()
        return ids.count
    }

    /// Delivers what is still pending for `user` in the store, oldest first, in batches.
    private func catchUpFromStore(for user: UserID, skipping delivered: inout Set<MessageID>) async throws(DrainInterrupted) -> Int {
        // Deliveries confirmed so far must be written first, or the store would hand them out again.
        await self.markWriter.flush()
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
            // A message stored but not yet routed will be routed (live or queued) in a moment; delivering it from
            // the store now would deliver it twice. Routing follows id order, so it and everything after it wait.
            let routedBelow = self.unrouted.min()
            let routed = batch.prefix { message in routedBelow.map { message.id < $0 } ?? true }
            var remaining = routed.filter { !delivered.contains($0.id) }[...]
            let (ids, end) = await self.deliverPipelined(
                to: user,
                next: {
                    remaining.popFirst().map { message in
                        let sender = senders[message.senderID] ?? User(id: message.senderID, username: message.senderID.rawValue)
                        return CatchUpItem(message: message, sender: sender, tag: nil)
                    }
                },
                settle: { _ in }
            )
            delivered.formUnion(ids)
            self.statistics.deliveredFromStore += ids.count
            count += ids.count
            if case .unconfirmed(let left) = end {
                self.logger.warning(
                    "Client did not confirm a caught-up message; the rest stays pending for the next reconnect",
                    metadata: ["chat.user.id": "\(user)", "chat.message.id": "\(left.first?.message.id.hexString ?? "")"]
                )
                throw DrainInterrupted(delivered: count)
            }
            guard routed.count == batch.count, batch.count == self.configuration.catchUpBatchSize, let last = batch.last else { break }
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

    /// Emits caught-up messages with up to ``ChatServiceConfiguration/drainWindow`` in flight and settles them
    /// in order: each run of confirmed messages is recorded delivered in one batch and handed to `settle` (which
    /// acknowledges them at their source). The first unconfirmed message ends the run.
    ///
    /// - Returns: the ids delivered, in order, and how the run ended.
    private func deliverPipelined(
        to user: UserID,
        next: () async throws -> CatchUpItem?,
        settle: ([CatchUpItem]) async throws -> Void
    ) async -> (delivered: [MessageID], end: CatchUpEnd) {
        let window = self.configuration.drainWindow
        var inFlight = Deque<(item: CatchUpItem, attempt: DeliveryAttempt)>()
        var delivered: [MessageID] = []
        var sourceError: (any Error)?
        while true {
            if sourceError == nil {
                do {
                    while inFlight.count < window {
                        // Back-pressure: the window follows what the client has read. With nothing in flight
                        // there is no acknowledgement to wait for, so wait for the reader instead.
                        let connections = self.connections(of: user)
                        if let backedUp = connections.first(where: { !self.transport.isWritable($0) }) {
                            guard inFlight.isEmpty else { break }
                            await self.transport.waitUntilWritable(backedUp)
                            continue
                        }
                        guard let item = try await next() else { break }
                        // The copy the recipient gets already lists them in readBy, as the product's guide has it
                        // (update readBy, then emit); the store records the same mark once the client confirms.
                        var message = item.message
                        message.markRead(by: user, at: self.wallClock.now())
                        let event = OutboundEvent.messageReceived(ReceivedMessage(message: message, sender: item.sender, isNew: false))
                        inFlight.append((item, self.emit(self.transport.prepare(event), to: connections)))
                    }
                } catch {
                    sourceError = error
                }
            }
            guard let head = inFlight.first else { break }
            guard await head.attempt.isConfirmed() else {
                return (delivered, .unconfirmed(inFlight.map(\.item)))
            }
            var batch = [inFlight.removeFirst().item]
            while let following = inFlight.first, following.attempt.isConfirmedNow == true {
                batch.append(inFlight.removeFirst().item)
            }
            self.recordDelivered(batch.map(\.message), to: user)
            delivered.append(contentsOf: batch.map(\.message.id))
            if sourceError == nil {
                do {
                    try await settle(batch)
                } catch {
                    sourceError = error
                }
            }
        }
        return (delivered, sourceError.map { .sourceFailed($0) } ?? .exhausted)
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
            "queue.dead_letter.reason": "\(deadLetter.reason)",
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
        self.eventWriter.record([DeliveryEvent(messageID: entry.message.id, userID: entry.recipient, status: status, timestamp: deadLetter.at)])
        self.receiptEvents?.record([
            ReceiptEvent(
                id: self.idGenerator.next(),
                kind: status == .expired ? .expired : .failed,
                messageID: entry.message.id,
                chatID: entry.message.chatID,
                userID: entry.recipient,
                at: deadLetter.at
            )
        ])
        do {
            try await self.store.recordOutcome(status, messageID: entry.message.id, userID: entry.recipient, at: deadLetter.at)
            self.storeSucceeded()
        } catch {
            self.storeFailed(error)
        }
    }
}
