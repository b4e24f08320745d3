import Foundation
import Logging

extension ChatService {
    /// Handles `message:send` from `connection`.
    ///
    /// On success the message is stored, emitted to live recipients, queued (or left pending in the store) for
    /// the others, and the sender gets `message:sent`; on failure the sender gets `message:error` and nothing is
    /// emitted or queued. The result is also what the transport answers an acknowledgement with.
    ///
    /// - Parameter ordered: called once, before this returns, when the send's place in the sender's order is
    ///   fixed (its message has its id) or it failed before that. A transport that starts a connection's next
    ///   send only then, without waiting for this one's store write, keeps that connection's messages in the
    ///   order sent while their writes share commits.
    @discardableResult
    public func send(
        _ request: SendMessageRequest,
        from connection: ConnectionID,
        ordered: (@Sendable () -> Void)? = nil
    ) async -> Result<MessageSent, ChatError> {
        let signal = OrderedSignal(ordered)
        let result = await self.accept(request, from: connection, ordered: signal)
        signal.fire()
        switch result {
        case .success(let sent):
            try? self.transport.emit(.messageSent(sent), to: connection)
        case .failure(let error):
            self.statistics.rejectedSends += 1
            // A flooding client is counted (rateLimitedSends), not logged line by line.
            self.logger.log(
                level: error.code == .rateLimited ? .debug : .info,
                "Message rejected",
                metadata: [
                    "chat.connection.id": "\(connection)", "chat.id": "\(LogSafe.value(request.chatID.rawValue))",
                    "error.code": "\(error.code)", "error": "\(LogSafe.value(error.message, limit: 256))",
                ]
            )
            let payload = MessageErrorPayload(error, chatID: request.chatID, clientMessageID: request.clientMessageID)
            try? self.transport.emit(.messageError(payload), to: connection)
        }
        return result
    }

    private func accept(_ request: SendMessageRequest, from connection: ConnectionID, ordered: OrderedSignal) async -> Result<MessageSent, ChatError> {
        guard let sender = self.connectionUsers[connection] else {
            return .failure(ChatError(.unauthorized, "this connection is not authenticated; reconnect with a valid token"))
        }
        // No store has such a chat; refusing here keeps a megabyte-long id away from the store and the log.
        guard request.chatID.rawValue.utf8.count <= Chat.maxIDBytes else {
            return .failure(ChatError(.chatNotFound, "chat \(LogSafe.quoted(request.chatID.rawValue)) does not exist"))
        }
        let chat: Chat?
        do {
            chat = try await self.store.chat(request.chatID)
            self.storeSucceeded()
        } catch {
            self.storeFailed(error)
            return .failure(Self.storeError(error))
        }
        let messageType: MessageType
        do {
            messageType = try self.validator.validate(request, chat: chat, sender: sender.id)
        } catch {
            return .failure(error)
        }
        var eligible = Self.recipients(of: chat, excluding: sender.id)
        if let limited = self.rateLimit(sender.id, recipients: eligible.count) {
            return .failure(limited)
        }
        if !eligible.isEmpty {
            let blockers: Set<UserID>
            do {
                blockers = try await self.store.usersBlocking(sender.id, among: eligible)
                self.storeSucceeded()
            } catch {
                self.storeFailed(error)
                return .failure(Self.storeError(error))
            }
            if !blockers.isEmpty {
                // Users who blocked the sender get nothing; in a chat where nobody else is left, the send fails.
                eligible.removeAll { blockers.contains($0) }
                if eligible.isEmpty {
                    return .failure(ChatError(.blocked, "the recipient has blocked you; the message was not sent"))
                }
            }
        }
        let recipients = eligible
        let now = self.wallClock.now()
        let message = Message(
            id: self.idGenerator.next(),
            chatID: request.chatID,
            senderID: sender.id,
            content: request.content,
            messageType: messageType,
            attachments: request.attachments ?? [],
            replyTo: request.replyTo,
            readBy: [ReadReceipt(userID: sender.id, readAt: now)],
            createdAt: now,
            clientMessageID: request.clientMessageID
        )
        // Issued in the same actor turn as the id, so tickets follow id order.
        let ticket = self.sequencer.issue()
        self.unrouted.insert(message.id)
        ordered.fire()
        // Presence is asked only about recipients this node holds no connection of (alongside the insert); the
        // others are pushed to here whatever it says. With a relay (several nodes) it is asked about everyone:
        // a recipient connected here may be connected to other nodes too, and each connection gets the message.
        let elsewhere = self.relay != nil ? recipients : recipients.filter { self.lanes[$0]?.connections.isEmpty ?? true }
        let inserted: Result<InsertOutcome, any Error>
        let online: [UserID: [PresenceRecord]]?
        if elsewhere.isEmpty {
            inserted = await self.insert(message, pendingFor: recipients)
            online = [:]
        } else {
            async let presence = self.lookupPresence(elsewhere)
            inserted = await self.insert(message, pendingFor: recipients)
            online = await presence
        }
        let outcome: InsertOutcome
        switch inserted {
        case .success(let value):
            outcome = value
            self.storeSucceeded()
        case .failure(let error):
            self.storeFailed(error)
            self.finishTicket(ticket, message: message.id)
            return .failure(Self.storeError(error))
        }
        if case .duplicate(let first) = outcome {
            self.finishTicket(ticket, message: message.id)
            guard first.isSameSend(as: message) else {
                // A reused key with other content is a client bug; answering with the first message would drop
                // this one silently.
                return .failure(ChatError(
                    .badRequest,
                    "clientMessageId \(LogSafe.quoted(request.clientMessageID ?? "")) was already used in this chat for a different message; use a new clientMessageId for a new message"
                ))
            }
            self.logger.debug(
                "Repeated send; answering with the first message",
                metadata: ["chat.message.id": "\(first.id)", "chat.client_message.id": "\(request.clientMessageID ?? "")"]
            )
            return .success(MessageSent(messageID: first.id, chatID: first.chatID, timestamp: first.createdAt, clientMessageID: first.clientMessageID))
        }
        await self.waitForTurn(ticket)
        let flushers = self.route(message, from: sender, to: recipients, presence: online)
        self.finishTicket(ticket, message: message.id)
        self.statistics.messagesSent += 1
        self.eventWriter.record(recipients.map { DeliveryEvent(messageID: message.id, userID: $0, status: .sent, timestamp: message.createdAt) })
        // The queue writes run as jobs of their own: `message:sent` needs the store's insert (done), not the
        // queue's confirm (a failed queue write leaves the message pending in the store for the catch-up).
        await self.startEnqueueFlushers(for: flushers)
        return .success(MessageSent(messageID: message.id, chatID: message.chatID, timestamp: message.createdAt, clientMessageID: message.clientMessageID))
    }

    private func insert(_ message: Message, pendingFor recipients: [UserID]) async -> Result<InsertOutcome, any Error> {
        do {
            return .success(try await self.store.insert(message, pendingFor: recipients))
        } catch {
            return .failure(error)
        }
    }

    /// Charges one message and its fan-out to `sender`; the error when either limit is exhausted.
    private func rateLimit(_ sender: UserID, recipients: Int) -> ChatError? {
        let now = self.wallClock.now().timeIntervalSince1970
        if let wait = self.sendLimiter?.take(sender, now: now) ?? self.fanOutLimiter?.take(sender, cost: Double(recipients), now: now) {
            self.statistics.rateLimitedSends += 1
            let retryAfter = Duration.milliseconds(Int((wait * 1000).rounded(.up)))
            return ChatError(
                .rateLimited,
                "you are sending too fast; retry in \(retryAfter.wholeMilliseconds) ms",
                retryAfter: retryAfter
            )
        }
        return nil
    }

    /// Decides and starts delivery for each recipient; returns the recipients whose enqueue flusher the caller
    /// must run. Synchronous, so no other message is routed in between.
    private func route(
        _ message: Message,
        from sender: User,
        to recipients: [UserID],
        presence: [UserID: [PresenceRecord]]?
    ) -> [UserID] {
        var flushers: [UserID] = []
        let now = self.wallClock.now()
        // Encoded once for every recipient that is pushed to.
        var received: PreparedEvent?
        for recipient in recipients {
            let entry = QueueEntry(message: message, sender: sender, recipient: recipient, enqueuedAt: now)
            // Mutated in place: a copy of the lane would copy its deque of pushes in flight on every message.
            let route = self.lanes[recipient, default: RecipientLane()].route(entry)
            switch route {
            case .push(let connections):
                let event = received ?? self.transport.prepare(.messageReceived(ReceivedMessage(message: message, sender: sender, isNew: true)))
                received = event
                self.push(event, message: message.id, to: recipient, connections: connections)
                // Connected to other nodes as well: a copy for those connections.
                let nodes = self.otherNodes(of: recipient, in: presence)
                if !nodes.isEmpty { self.copy(entry, to: nodes) }
            case .enqueue(let startFlusher):
                // Connected elsewhere (presence says which nodes): the flusher forwards there.
                self.lanes[recipient]?.sawRemoteNodes(self.otherNodes(of: recipient, in: presence))
                if startFlusher { flushers.append(recipient) }
            }
        }
        return flushers
    }

    /// The other nodes `presence` says hold a connection of `recipient`; none without a relay, and none when
    /// presence is unknown (nil: the lookup failed, and the recipient is treated as offline, the product's rule).
    func otherNodes(of recipient: UserID, in presence: [UserID: [PresenceRecord]]?) -> Set<NodeID> {
        guard self.relay != nil, let records = presence?[recipient] else { return [] }
        return Set(records.map(\.nodeID)).subtracting([self.configuration.nodeID])
    }

    /// Emits a live message to the connections of `recipient`; its confirmation (the first client acknowledgement,
    /// or the write itself) arrives later as a settlement, without a task waiting for it.
    func push(_ event: PreparedEvent, message: MessageID, to recipient: UserID, connections: [ConnectionID]) {
        guard case .clientAcknowledgement = self.configuration.deliveryConfirmation else {
            // Confirmed by the write itself: known now.
            self.pushSettled(message, for: recipient, confirmed: self.emit(event, to: connections).written > 0)
            return
        }
        let confirmation = PushConfirmation(connections: connections.count) { [self] confirmed in
            self.pushSettled(message, for: recipient, confirmed: confirmed)
        }
        for connection in connections {
            let acknowledgement = Acknowledgement(onCompletion: confirmation.record)
            do {
                try self.transport.emit(event, to: connection, acknowledgement: acknowledgement)
                self.acknowledgementDeadlines?.register(acknowledgement)
            } catch {
                self.emitFailed(event.event, to: connection, error)
                acknowledgement.fail(ChatError(.connectionClosed, "the event could not be written"))
            }
        }
    }

    private func emitFailed(_ event: OutboundEvent, to connection: ConnectionID, _ error: any Error) {
        self.logger.debug(
            "Emit to connection failed",
            metadata: ["chat.connection.id": "\(connection)", "event": "\(event.name)", "error": "\(error)"]
        )
    }

    /// A live push was confirmed or not: buffered, and applied in one engine turn with the others that arrive
    /// meanwhile. Called from any thread (the transport completes acknowledgements on its own).
    nonisolated func pushSettled(_ message: MessageID, for recipient: UserID, confirmed: Bool) {
        let schedule = self.settlements.withLock { buffer in
            buffer.items.append(PushSettlement(messageID: message, recipient: recipient, confirmed: confirmed))
            defer { buffer.scheduled = true }
            return !buffer.scheduled
        }
        if schedule {
            // When the engine is shutting down nobody listens, and the settlements wait for `run()`'s last step.
            self.settlementSignalContinuation.yield()
        }
    }

    /// Applies the buffered settlements; the enqueue flushers they start run as jobs of their own (or here, at
    /// shutdown, when no job runs any more).
    func applySettlements() async {
        let items = self.settlements.withLock { buffer in
            defer {
                buffer.items = []
                buffer.scheduled = false
            }
            return buffer.items
        }
        var flushers: [UserID] = []
        for item in items where self.settleLivePush(item.messageID, for: item.recipient, confirmed: item.confirmed) {
            flushers.append(item.recipient)
        }
        await self.startEnqueueFlushers(for: flushers)
    }

    /// Emits `event` to `connections` and returns the attempt whose confirmation decides delivery.
    func emit(_ event: PreparedEvent, to connections: [ConnectionID]) -> DeliveryAttempt {
        var acknowledgements: [Acknowledgement] = []
        var written = 0
        for connection in connections {
            let acknowledgement: Acknowledgement? =
                if case .clientAcknowledgement = self.configuration.deliveryConfirmation { Acknowledgement() } else { nil }
            do {
                try self.transport.emit(event, to: connection, acknowledgement: acknowledgement)
                written += 1
                if let acknowledgement {
                    acknowledgements.append(acknowledgement)
                    self.acknowledgementDeadlines?.register(acknowledgement)
                }
            } catch {
                self.emitFailed(event.event, to: connection, error)
            }
        }
        return DeliveryAttempt(confirmation: self.configuration.deliveryConfirmation, written: written, acknowledgements: acknowledgements)
    }

    /// A live push was confirmed or not; records deliveries and hands unconfirmed messages to the offline path.
    /// Returns whether the caller must run the recipient's enqueue flusher.
    private func settleLivePush(_ messageID: MessageID, for recipient: UserID, confirmed: Bool) -> Bool {
        let now = self.wallClock.now()
        // In place, as in route(_:from:to:presence:).
        guard let resolution = self.lanes[recipient]?.resolvePush(messageID, confirmed: confirmed, now: now) else { return false }
        if !resolution.delivered.isEmpty {
            self.statistics.deliveredLive += resolution.delivered.count
            if let observer = self.observer {
                for message in resolution.delivered {
                    observer.delivered(latency: .nanoseconds(Int64(now.timeIntervalSince(message.createdAt) * 1e9)))
                }
            }
            self.recordDelivered(resolution.delivered, to: recipient)
        }
        if !resolution.requeued.isEmpty {
            self.statistics.unconfirmedLive += resolution.requeued.count
            self.logger.warning(
                "Client did not confirm live delivery; messages handed to the offline path",
                metadata: ["chat.user.id": "\(recipient)", "chat.message.count": "\(resolution.requeued.count)"]
            )
        }
        self.removeLaneIfIdle(recipient)
        return resolution.startFlusher
    }

    /// Starts the enqueue flusher of each of `recipients` as a job of its own; during shutdown, when no job runs
    /// any more, runs it here (a lane whose flusher never ran would keep a reconnect's drain waiting for it).
    func startEnqueueFlushers(for recipients: [UserID]) async {
        for recipient in recipients where !self.submit({ [self] in await self.runEnqueueFlusher(for: recipient) }) {
            await self.runEnqueueFlusher(for: recipient)
        }
    }

    /// Writes `recipient`'s buffered queue entries, batch after batch, in order, until none are left. Entries the
    /// queue cannot take stay pending in the store and are caught up from there.
    func runEnqueueFlusher(for recipient: UserID) async {
        while var batch = self.lanes[recipient]?.takeEnqueueBatch() {
            if let relay = self.relay, let nodes = self.lanes[recipient]?.remoteNodes, !nodes.isEmpty,
                !batch.contains(where: \.relayed)
            {
                batch = await self.forward(batch, to: nodes, for: recipient, via: relay)
                if batch.isEmpty { continue }
            }
            do {
                let rejected = try await self.queue.enqueue(batch, for: recipient)
                self.queueSucceeded()
                self.statistics.queued += batch.count - rejected.count
                self.logger.info(
                    "Message queued for offline user",
                    metadata: [
                        "chat.user.id": "\(recipient)", "chat.message.count": "\(batch.count - rejected.count)",
                        "chat.message.id": "\(batch.last?.message.id.hexString ?? "")",
                    ]
                )
                if !rejected.isEmpty {
                    self.statistics.queueRejected += rejected.count
                    self.logger.warning(
                        "Offline queue full; messages stay pending in the store until the user reconnects",
                        metadata: ["chat.user.id": "\(recipient)", "chat.message.count": "\(rejected.count)"]
                    )
                }
            } catch {
                self.queueFailed(error)
                self.logger.debug(
                    "Queueing failed; messages stay pending in the store",
                    metadata: ["chat.user.id": "\(recipient)", "chat.message.count": "\(batch.count)"]
                )
            }
        }
        for waiter in self.enqueueIdleWaiters.removeValue(forKey: recipient) ?? [] {
            waiter.resume()
        }
        self.removeLaneIfIdle(recipient)
    }

    /// Returns once every offline-queue write the engine has started so far has landed, failed or been refused.
    ///
    /// `message:sent` does not wait for the queue (the store holds the message pending until it is confirmed), so
    /// a test that looks at the queue right after a send, or changes the queue's behaviour between two sends,
    /// waits here first.
    public func offlineWritesSettled() async {
        for (recipient, lane) in self.lanes where lane.enqueueInFlight {
            await self.waitUntilEnqueueIdle(recipient)
        }
    }

    /// Returns once no enqueue for `recipient` is buffered or in flight.
    func waitUntilEnqueueIdle(_ recipient: UserID) async {
        guard let lane = self.lanes[recipient], lane.enqueueInFlight else { return }
        await withCheckedContinuation { continuation in
            self.enqueueIdleWaiters[recipient, default: []].append(continuation)
        }
    }

    private func waitForTurn(_ ticket: UInt64) async {
        guard !self.sequencer.isTurn(ticket) else { return }
        await withCheckedContinuation { continuation in
            if let ready = self.sequencer.wait(ticket, continuation) { ready.resume() }
        }
    }

    private func finishTicket(_ ticket: UInt64, message: MessageID) {
        self.unrouted.remove(message)
        self.sequencer.finish(ticket)?.resume()
    }

    private static func recipients(of chat: Chat?, excluding sender: UserID) -> [UserID] {
        // A set for the duplicates check: a linear `contains` made every send to a chat of 1,000 cost a million
        // comparisons.
        var recipients: [UserID] = []
        // Invited participants who have not accepted get nothing until they do.
        var seen: Set<UserID> = Set(chat?.invited ?? []).union([sender])
        for participant in chat?.participants ?? [] where seen.insert(participant).inserted {
            recipients.append(participant)
        }
        return recipients
    }

    static func storeError(_ error: any Error) -> ChatError {
        // Said as it is: an outage, or a stored message that cannot be opened (which names the key to configure).
        if let error = error as? ChatError, [.storeUnavailable, .messageUnreadable].contains(error.code) { return error }
        if let error = error as? ChatError, error.code == .internalError {
            return ChatError(
                .internalError,
                "the message store refused the request; nothing was stored and retrying will not help (the server's log says why)",
                underlying: error
            )
        }
        return ChatError(
            .storeUnavailable,
            "the message store could not be reached; nothing was stored, retry later",
            underlying: error
        )
    }
}

/// Calls a send's `ordered` callback once, on the engine's actor.
private final class OrderedSignal {
    private var callback: (@Sendable () -> Void)?

    init(_ callback: (@Sendable () -> Void)?) {
        self.callback = callback
    }

    func fire() {
        guard let callback = self.callback else { return }
        self.callback = nil
        callback()
    }
}
