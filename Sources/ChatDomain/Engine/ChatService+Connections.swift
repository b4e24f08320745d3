import Foundation
import Logging

extension ChatService {
    /// A client of `user` connected on `connection` (already authenticated by the transport).
    ///
    /// The user is registered as present and, on their first connection, announced with `user:online`. If the
    /// store holds nothing pending for them they go live at once; otherwise new messages queue up behind their
    /// backlog until they emit `user:reconnected`.
    public func connect(_ connection: ConnectionID, user: User) async {
        self.connectionUsers[connection] = user
        var lane = self.lanes[user.id, default: RecipientLane()]
        let isFirst = lane.opened(connection)
        let snapshot = lane.snapshot
        self.lanes[user.id] = lane
        self.logger.info(
            "User connected",
            metadata: ["chat.user.id": "\(user.id)", "chat.connection.id": "\(connection)", "chat.first": "\(isFirst)"]
        )
        do {
            try await self.store.saveUser(user)
            self.storeSucceeded()
        } catch {
            self.storeFailed(error)
        }
        await self.registerPresence(
            PresenceRecord(userID: user.id, connectionID: connection, nodeID: self.configuration.nodeID, since: self.wallClock.now())
        )
        guard isFirst else { return }
        // The first connection anywhere announces the user; one more device on another node does not.
        if await self.isConnectedElsewhere(user.id) {
            self.logger.debug("User already connected on another node; no user:online", metadata: ["chat.user.id": "\(user.id)"])
        } else {
            await self.broadcast(.userOnline(PresenceChange(userID: user.id, timestamp: self.wallClock.now())), about: user.id)
        }
        let isEmpty = await self.hasNoBacklog(user.id)
        if self.lanes[user.id]?.backlogChecked(isEmpty: isEmpty, snapshot: snapshot) == true {
            self.logger.debug("User has no backlog; live delivery", metadata: ["chat.user.id": "\(user.id)"])
        }
    }

    /// `connection` closed. On the user's last connection they are announced with `user:offline`.
    public func disconnect(_ connection: ConnectionID) async {
        guard let user = self.connectionUsers.removeValue(forKey: connection) else { return }
        self.typingFloods.remove(connection)
        let isLast = self.lanes[user.id]?.closed(connection) ?? false
        self.logger.info(
            "User disconnected",
            metadata: ["chat.user.id": "\(user.id)", "chat.connection.id": "\(connection)", "chat.last": "\(isLast)"]
        )
        do {
            try await self.presence.unregister(connection: connection, of: user.id, node: self.configuration.nodeID)
            self.presenceSucceeded()
        } catch {
            self.presenceFailed(error)
        }
        // Typing indicators started here end with the user's last connection here.
        if isLast { await self.stopTyping(of: user.id) }
        // The last connection anywhere: a user still connected on another node is not offline.
        if isLast, !(await self.isConnectedElsewhere(user.id)) {
            await self.broadcast(.userOffline(PresenceChange(userID: user.id, timestamp: self.wallClock.now())), about: user.id)
        }
        self.removeLaneIfIdle(user.id)
    }

    /// Whether the store holds nothing pending for `user`. Every undelivered message is pending in the store
    /// until confirmed, whether it is also queued or not, so this one query covers the queue too.
    func hasNoBacklog(_ user: UserID) async -> Bool {
        // Deliveries confirmed moments ago may still be on their way to the store (group commit); without this a
        // client that reconnects right after acknowledging would find its own delivered messages as backlog.
        await self.markWriter.flush()
        let since = self.wallClock.now().addingTimeInterval(-self.configuration.retention)
        do {
            let pending = try await self.store.pendingMessages(for: user, createdSince: since, afterID: nil, limit: 1)
            self.storeSucceeded()
            return pending.isEmpty
        } catch {
            self.storeFailed(error)
            return false
        }
    }

    /// Sends `event` to every local connection of the users who share a chat with `user`, and, with several
    /// nodes, to their connections on the other nodes.
    func broadcast(_ event: OutboundEvent, about user: UserID) async {
        let chats: [Chat]
        do {
            chats = try await self.store.chats(of: user)
            self.storeSucceeded()
        } catch {
            self.storeFailed(error)
            return
        }
        // Only chats the user has accepted share their presence.
        var peers = Set(chats.filter { $0.hasAccepted(user) }.flatMap(\.participants))
        peers.remove(user)
        // Presence is shared only with users who share a chat with `user` and whom `user` has not blocked.
        do {
            peers.subtract(try await self.store.blockedUsers(of: user))
        } catch {
            // Unknown block list: say nothing rather than tell a blocked user.
            self.storeFailed(error)
            return
        }
        for peer in peers {
            for connection in self.lanes[peer]?.connections ?? [] {
                try? self.transport.emit(event, to: connection)
            }
        }
        switch event {
        case .userOnline(let change): await self.announce(change, online: true, to: peers)
        case .userOffline(let change): await self.announce(change, online: false, to: peers)
        default: break
        }
    }

    func registerPresence(_ record: PresenceRecord) async {
        do {
            try await self.presence.register(record)
            self.presenceSucceeded()
        } catch {
            self.presenceFailed(error)
        }
    }

    /// Looks up `users` in the presence store; nil while it is unreachable (the caller relies on local state).
    func lookupPresence(_ users: [UserID]) async -> [UserID: [PresenceRecord]]? {
        guard !users.isEmpty else { return [:] }
        do {
            let result = try await self.presence.lookup(users)
            self.presenceSucceeded()
            return result
        } catch {
            self.presenceFailed(error)
            return nil
        }
    }

    func heartbeatLoop() async {
        while !Task.isCancelled {
            do {
                try await self.presence.heartbeat(node: self.configuration.nodeID)
                self.presenceSucceeded()
            } catch {
                self.presenceFailed(error)
            }
            try? await self.clock.sleep(for: self.configuration.presenceHeartbeatInterval)
        }
    }

    // MARK: Outages

    func presenceFailed(_ error: any Error) {
        if self.presenceOutage.failed() == .wentDown {
            self.logger.warning(
                "Presence store unreachable; continuing with this node's own presence",
                metadata: ["component": "presence", "error": "\(error)"]
            )
        }
    }

    func presenceSucceeded() {
        guard self.presenceOutage.succeeded() == .cameBack else { return }
        self.logger.info("Presence store reachable again; re-registering this node's connections")
        let now = self.wallClock.now()
        let records = self.connectionUsers.map { connection, user in
            PresenceRecord(userID: user.id, connectionID: connection, nodeID: self.configuration.nodeID, since: now)
        }
        self.submit { [self] in
            for record in records { await self.registerPresence(record) }
        }
    }

    func queueFailed(_ error: any Error) {
        if self.queueOutage.failed() == .wentDown {
            self.logger.warning(
                "Offline queue unreachable; offline messaging disabled",
                metadata: ["component": "queue", "error": "\(error)"]
            )
        }
    }

    func queueSucceeded() {
        if self.queueOutage.succeeded() == .cameBack {
            self.logger.info("Offline queue reachable again; offline messaging enabled")
        }
    }

    func storeFailed(_ error: any Error) {
        guard Self.isUnreachable(error) else {
            // The store answered, with an error: not an outage. The error names the document or command.
            self.logger.error("Message store call failed", metadata: ["error": "\(LogSafe.value(String(describing: error), limit: 1024))"])
            return
        }
        if self.storeOutage.failed() == .wentDown {
            self.logger.error("Message store unreachable; sends fail until it returns", metadata: ["error": "\(error)"])
        }
    }

    /// Whether `error` says the backing service could not be reached (rather than that it refused the call).
    static func isUnreachable(_ error: any Error) -> Bool {
        guard let error = error as? ChatError else { return true }
        return [.unavailable, .storeUnavailable, .timeout].contains(error.code)
    }

    func storeSucceeded() {
        if self.storeOutage.succeeded() == .cameBack {
            self.logger.info("Message store reachable again")
        }
    }
}

extension ChatService {
    /// The chats `user` takes part in; a transport joins their rooms when the user connects.
    /// - Throws: ``ChatError`` `store_unavailable` when the store cannot be reached.
    public func chats(of user: UserID) async throws(ChatError) -> [Chat] {
        try await self.storeCall { try await self.store.chats(of: user) }
    }
}

extension ChatService {
    /// Checks each backing service with one cheap call, so an outage shows even without traffic, and returns
    /// the resulting health. Readiness probes call this.
    public func probe() async -> HealthReport {
        let probe = "__chatd_probe__"
        do {
            _ = try await self.store.chat(ChatID(probe))
            self.storeSucceeded()
        } catch {
            self.storeFailed(error)
        }
        do {
            _ = try await self.presence.lookup([UserID(probe)])
            self.presenceSucceeded()
        } catch {
            self.presenceFailed(error)
        }
        do {
            _ = try await self.queue.depth(for: UserID(probe))
            self.queueSucceeded()
        } catch {
            self.queueFailed(error)
        }
        return self.health()
    }
}
