import CHiredis
import ChatAdapterSupport
import ChatDomain
import Foundation
import Logging

/// One hiredis connection and the presence this node wrote through it.
///
/// Confinement: every method runs on the single thread of its ``RedisPresenceStore``'s thread pool, never on
/// Swift's cooperative pool, so the `redisContext` (not thread-safe) is only ever touched by that thread. That
/// invariant is why the class may be `@unchecked Sendable`: it only crosses into that thread.
final class RedisConnection: @unchecked Sendable {
    /// Reads the presence of a batch of users in one round trip and forgets connections of nodes that stopped
    /// heartbeating (or restarted). KEYS: the users' hashes. ARGV[1]: the prefix of node heartbeat keys.
    /// Each hash field is a connection id; its value is `<incarnation>|<since ms>|<node id>`, and the entry is
    /// live while the node's heartbeat key holds that incarnation.
    static let lookupScript = """
        local result = {}
        local alive = {}
        for i, key in ipairs(KEYS) do
          local entries = redis.call('HGETALL', key)
          local live = {}
          for j = 1, #entries, 2 do
            local value = entries[j + 1]
            local incarnation, node = string.match(value, '^([^|]*)|[^|]*|(.*)$')
            local current = false
            if node then
              current = alive[node]
              if current == nil then
                current = redis.call('GET', ARGV[1] .. node) or false
                alive[node] = current
              end
            end
            if current and current == incarnation then
              live[#live + 1] = entries[j]
              live[#live + 1] = value
            else
              redis.call('HDEL', key, entries[j])
            end
          end
          result[i] = live
        end
        return result
        """

    /// Claims the expired nodes for a janitor. ARGV[1]: the key prefix (with its colon), ARGV[2]: the claimer,
    /// ARGV[3]: the lease in ms. A node is expired when it is in the set of nodes and its heartbeat key is gone.
    static let claimScript = """
        local claimed = {}
        for _, node in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'nodes')) do
          if node ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then
            if redis.call('SET', ARGV[1] .. 'janitor:' .. node, ARGV[2], 'NX', 'PX', ARGV[3]) then
              claimed[#claimed + 1] = node
            end
          end
        end
        return claimed
        """

    /// Removes a node's connections of earlier lives (every one when its heartbeat is gone, else those whose
    /// incarnation is not the heartbeat's) and returns the users left with no live connection anywhere.
    /// ARGV[1]: the key prefix (with its colon), ARGV[2]: the node.
    static let removeStaleScript = """
        local prefix, node = ARGV[1], ARGV[2]
        local current = redis.call('GET', prefix .. 'node:' .. node)
        local usersKey = prefix .. 'node-users:' .. node
        local alive = {}
        local offline = {}
        for _, user in ipairs(redis.call('SMEMBERS', usersKey)) do
          local key = prefix .. 'user:' .. user
          local entries = redis.call('HGETALL', key)
          local keeps, live = false, false
          for j = 1, #entries, 2 do
            local incarnation, owner = string.match(entries[j + 1], '^([^|]*)|[^|]*|(.*)$')
            if owner == node and incarnation ~= current then
              redis.call('HDEL', key, entries[j])
            elseif owner then
              if owner == node then keeps = true end
              local beat = alive[owner]
              if beat == nil then
                beat = redis.call('GET', prefix .. 'node:' .. owner) or false
                alive[owner] = beat
              end
              if beat and beat == incarnation then live = true end
            end
          end
          if not keeps then redis.call('SREM', usersKey, user) end
          if not live then offline[#offline + 1] = user end
        end
        return offline
        """

    /// Forgets a node after its cleanup unless it heartbeats again, and ends the claim on it.
    /// ARGV[1]: the key prefix (with its colon), ARGV[2]: the node.
    static let forgetScript = """
        if redis.call('EXISTS', ARGV[1] .. 'node:' .. ARGV[2]) == 0 and redis.call('SCARD', ARGV[1] .. 'node-users:' .. ARGV[2]) == 0 then
          redis.call('SREM', ARGV[1] .. 'nodes', ARGV[2])
        end
        redis.call('DEL', ARGV[1] .. 'janitor:' .. ARGV[2])
        return 1
        """

    private let configuration: RedisPresenceConfiguration
    private let logger: Logger
    /// Identifies this process's registrations: a node that restarts under the same id does not resurrect the
    /// connections of its previous life.
    let incarnation: String
    private var context: UnsafeMutablePointer<redisContext>?
    private var backoff: ReconnectBackoff
    /// Whether the current outage was logged (once per outage, until a connect succeeds).
    private var outageLogged = false
    private var scriptSHA: String?
    /// What this node registered; written again after every reconnect, because a restarted Redis lost it.
    private var registrations: [ConnectionID: PresenceRecord] = [:]
    /// How many of `registrations` each (node, user) has: the user leaves the node's user set with the last.
    private var registrationCounts: [NodeUser: Int] = [:]
    private var heartbeatNodes: Set<NodeID> = []
    private(set) var roundTrips = 0

    init(configuration: RedisPresenceConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.backoff = ReconnectBackoff(configuration.reconnectBackoff)
        self.incarnation = String(UInt64.random(in: 1...UInt64.max), radix: 36)
    }

    deinit {
        if let context { redisFree(context) }
    }

    // MARK: Presence operations

    func register(_ record: PresenceRecord) throws(RedisPresenceError) {
        if self.registrations.updateValue(record, forKey: record.connectionID) == nil {
            self.registrationCounts[NodeUser(node: record.nodeID, user: record.userID), default: 0] += 1
        }
        self.heartbeatNodes.insert(record.nodeID)
        // The heartbeat first: a janitor that looks between the commands must not find the node expired.
        try self.expectSuccess(self.execute([self.heartbeatCommand(record.nodeID)] + self.registerCommands(record)))
    }

    func unregister(connection: ConnectionID, of user: UserID, node: NodeID) throws(RedisPresenceError) {
        var commands = [["HDEL", self.userKey(user), connection.rawValue]]
        if let record = self.registrations.removeValue(forKey: connection) {
            let key = NodeUser(node: record.nodeID, user: record.userID)
            self.registrationCounts[key, default: 1] -= 1
            if self.registrationCounts[key] == 0 {
                self.registrationCounts[key] = nil
                commands.append(["SREM", self.nodeUsersKey(node), user.rawValue])
            }
        }
        try self.expectSuccess(self.execute(commands))
    }

    /// Refreshes `node`'s heartbeat. If it had expired (this node was paused, or cut off from Redis, for longer
    /// than the TTL), other nodes may have removed its connections: they are written again.
    func heartbeat(node: NodeID) throws(RedisPresenceError) {
        self.heartbeatNodes.insert(node)
        let reply = try self.execute([self.heartbeatCommand(node) + ["GET"]])[0]
        if case .error(let message) = reply { throw self.serverError(message) }
        let mine = self.registrations.values.filter { $0.nodeID == node }
        guard reply == .null, !mine.isEmpty else { return }
        self.logger.warning(
            "This node's presence heartbeat had expired (paused or cut off from Redis for longer than the presence TTL); its connections are registered again",
            metadata: ["chat.node.id": "\(node)", "presence.reregistered": "\(mine.count)"]
        )
        try self.expectSuccess(self.execute(mine.flatMap(self.registerCommands)))
    }

    func claimExpiredNodes(for claimer: NodeID, lease: Duration) throws(RedisPresenceError) -> [NodeID] {
        let reply = try self.evaluate(Self.claimScript, [self.keyPrefix, claimer.rawValue, "\(max(1, lease.wholeMilliseconds))"])
        guard case .array(let nodes) = reply else {
            throw RedisPresenceError(code: .protocolError, message: "unexpected reply to the expired-node claim: \(reply)")
        }
        return nodes.compactMap { $0.string.map { NodeID($0) } }.sorted()
    }

    func removeStaleConnections(of node: NodeID) throws(RedisPresenceError) -> [UserID] {
        let reply = try self.evaluate(Self.removeStaleScript, [self.keyPrefix, node.rawValue])
        guard case .array(let users) = reply else {
            throw RedisPresenceError(code: .protocolError, message: "unexpected reply to the stale-connection removal: \(reply)")
        }
        return users.compactMap { $0.string.map { UserID($0) } }.sorted()
    }

    func forgetExpiredNode(_ node: NodeID) throws(RedisPresenceError) {
        _ = try self.evaluate(Self.forgetScript, [self.keyPrefix, node.rawValue])
    }

    /// Runs a script of the janitor's (rare: no script cache), with no keys and `arguments`.
    private func evaluate(_ script: String, _ arguments: [String]) throws(RedisPresenceError) -> RedisReply {
        let reply = try self.execute([["EVAL", script, "0"] + arguments])[0]
        if case .error(let message) = reply { throw self.serverError(message) }
        return reply
    }

    func lookup(_ users: [UserID]) throws(RedisPresenceError) -> [UserID: [PresenceRecord]] {
        guard !users.isEmpty else { return [:] }
        let keys = users.map(self.userKey)
        var reply = try self.execute([self.lookupCommand(keys: keys)])[0]
        if case .error(let message) = reply, message.hasPrefix("NOSCRIPT") {
            // The script cache was flushed; EVAL loads it again.
            reply = try self.execute([["EVAL", Self.lookupScript, "\(keys.count)"] + keys + [self.nodeKeyPrefix]])[0]
        }
        guard case .array(let perUser) = reply, perUser.count == users.count else {
            throw RedisPresenceError(code: .protocolError, message: "unexpected reply to the presence lookup: \(reply)")
        }
        var result: [UserID: [PresenceRecord]] = [:]
        for (user, entries) in zip(users, perUser) {
            guard case .array(let flat) = entries else { continue }
            var records: [PresenceRecord] = []
            var index = 0
            while index + 1 < flat.count {
                if let connection = flat[index].string, let record = self.parse(flat[index + 1].string, user: user, connection: connection) {
                    records.append(record)
                }
                index += 2
            }
            result[user] = records.sorted { $0.connectionID < $1.connectionID }
        }
        return result
    }

    /// Frees the connection; the next call connects again.
    func close() {
        if let context { redisFree(context) }
        self.context = nil
    }

    // MARK: Commands and keys

    /// Every key starts with this (the Lua scripts get it as an argument and add the same suffixes).
    private var keyPrefix: String { "\(self.configuration.keyPrefix):" }

    private var nodeKeyPrefix: String { self.keyPrefix + "node:" }

    private func nodeUsersKey(_ node: NodeID) -> String {
        self.keyPrefix + "node-users:" + node.rawValue
    }

    private func userKey(_ user: UserID) -> String {
        self.keyPrefix + "user:" + user.rawValue
    }

    /// The connection's entry, and its node and user in the sets a janitor reads.
    private func registerCommands(_ record: PresenceRecord) -> [[String]] {
        let since = Int64((record.since.timeIntervalSince1970 * 1000).rounded(.down))
        let value = "\(self.incarnation)|\(since)|\(record.nodeID.rawValue)"
        return [
            ["HSET", self.userKey(record.userID), record.connectionID.rawValue, value],
            ["SADD", self.keyPrefix + "nodes", record.nodeID.rawValue],
            ["SADD", self.nodeUsersKey(record.nodeID), record.userID.rawValue],
        ]
    }

    private func heartbeatCommand(_ node: NodeID) -> [String] {
        ["SET", self.nodeKeyPrefix + node.rawValue, self.incarnation, "PX", "\(self.configuration.presenceTTL.wholeMilliseconds)"]
    }

    private func lookupCommand(keys: [String]) -> [String] {
        if let sha = self.scriptSHA {
            return ["EVALSHA", sha, "\(keys.count)"] + keys + [self.nodeKeyPrefix]
        }
        return ["EVAL", Self.lookupScript, "\(keys.count)"] + keys + [self.nodeKeyPrefix]
    }

    private func parse(_ value: String?, user: UserID, connection: String) -> PresenceRecord? {
        guard let parts = value?.split(separator: "|", maxSplits: 2, omittingEmptySubsequences: false), parts.count == 3,
            let since = Int64(parts[1])
        else { return nil }
        return PresenceRecord(
            userID: user,
            connectionID: ConnectionID(connection),
            nodeID: NodeID(String(parts[2])),
            since: Date(timeIntervalSince1970: TimeInterval(since) / 1000)
        )
    }

    private func expectSuccess(_ replies: [RedisReply]) throws(RedisPresenceError) {
        for reply in replies {
            if case .error(let message) = reply { throw self.serverError(message) }
        }
    }

    private func serverError(_ message: String) -> RedisPresenceError {
        if message.hasPrefix("NOAUTH") || message.hasPrefix("WRONGPASS") || message.contains("invalid password") {
            return RedisPresenceError(
                code: .authenticationFailed,
                message: "Redis refused access (\(message)); check REDIS_PASSWORD"
            )
        }
        return RedisPresenceError(code: .serverError, message: "Redis answered: \(message)")
    }

    // MARK: Connection

    /// Runs `commands` as one pipeline (one round trip), connecting first if needed. A connection found broken
    /// on use (Redis restarted, an idle connection dropped) is replaced once, at once.
    private func execute(_ commands: [[String]]) throws(RedisPresenceError) -> [RedisReply] {
        if self.context == nil { try self.connect() }
        do {
            return try self.pipeline(commands)
        } catch where error.code == .connectionLost {
            try self.connect()
            return try self.pipeline(commands)
        }
    }

    private func connect() throws(RedisPresenceError) {
        if let wait = self.backoff.remaining(at: .now) {
            throw RedisPresenceError(
                code: .backingOff,
                message: "Redis at \(self.endpoint) was unreachable; next attempt in \(wait.wholeMilliseconds) ms"
            )
        }
        do {
            try self.openContext()
            let reregistered = try self.setUp()
            self.backoff.succeeded()
            self.outageLogged = false
            self.logger.info(
                "Connected to Redis",
                metadata: ["redis.endpoint": "\(self.endpoint)", "redis.db": "\(self.configuration.database)", "presence.reregistered": "\(reregistered)"]
            )
        } catch {
            if !self.outageLogged {
                // The product's own line, once per outage; the engine says what it means for delivery.
                self.outageLogged = true
                self.logger.warning(
                    "Redis connection failed, continuing without Redis",
                    metadata: ["redis.endpoint": "\(self.endpoint)", "error": "\(error)"]
                )
            }
            self.close()
            self.backoff.failed(at: .now)
            throw error
        }
    }

    private func openContext() throws(RedisPresenceError) {
        let timeout = chatd_redis_timeval(self.configuration.connectTimeout.wholeMilliseconds)
        guard let context = redisConnectWithTimeout(self.configuration.host, Int32(self.configuration.port), timeout) else {
            throw RedisPresenceError(code: .connectionFailed, message: "cannot allocate a Redis context")
        }
        self.context = context
        if context.pointee.err != 0 {
            let reason = String(cString: chatd_redis_errstr(context))
            throw RedisPresenceError(code: .connectionFailed, message: "cannot connect to Redis at \(self.endpoint): \(reason)")
        }
        _ = redisSetTimeout(context, chatd_redis_timeval(self.configuration.commandTimeout.wholeMilliseconds))
        _ = redisEnableKeepAlive(context)
    }

    /// AUTH, SELECT, script load and this node's registrations, in one round trip; returns how many
    /// connections were registered again.
    private func setUp() throws(RedisPresenceError) -> Int {
        var commands: [[String]] = []
        if let password = self.configuration.password { commands.append(["AUTH", password]) }
        commands.append(["SELECT", "\(self.configuration.database)"])
        commands.append(["SCRIPT", "LOAD", Self.lookupScript])
        commands += self.heartbeatNodes.map(self.heartbeatCommand)
        commands += self.registrations.values.flatMap(self.registerCommands)
        let replies = try self.pipeline(commands)
        var index = 0
        if self.configuration.password != nil, case .error(let message) = replies[0] {
            throw RedisPresenceError(code: .authenticationFailed, message: "Redis refused the password (\(message)); check REDIS_PASSWORD")
        }
        if self.configuration.password != nil { index += 1 }
        if case .error(let message) = replies[index] {
            throw self.serverError(message).withContext("SELECT \(self.configuration.database) failed")
        }
        index += 1
        guard case .bulk = replies[index], let sha = replies[index].string else {
            if case .error(let message) = replies[index] { throw self.serverError(message) }
            throw RedisPresenceError(code: .protocolError, message: "SCRIPT LOAD answered \(replies[index])")
        }
        self.scriptSHA = sha
        try self.expectSuccess(Array(replies[(index + 1)...]))
        return self.registrations.count
    }

    private func pipeline(_ commands: [[String]]) throws(RedisPresenceError) -> [RedisReply] {
        guard let context = self.context else {
            throw RedisPresenceError(code: .connectionLost, message: "not connected to Redis at \(self.endpoint)")
        }
        self.roundTrips += 1
        for command in commands {
            // hiredis copies the arguments into its output buffer, so they may be freed right after.
            let arguments = command.map { strdup($0) }
            defer { arguments.forEach { free($0) } }
            let lengths = command.map { $0.utf8.count }
            var pointers = arguments.map { UnsafePointer($0) }
            let status = pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { argvlen in
                    redisAppendCommandArgv(context, Int32(command.count), argv.baseAddress, argvlen.baseAddress)
                }
            }
            guard status == REDIS_OK else { throw self.lostConnection() }
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReply(context, &raw) == REDIS_OK, let raw else { throw self.lostConnection() }
            let reply = raw.assumingMemoryBound(to: redisReply.self)
            replies.append(RedisReply(reply))
            freeReplyObject(raw)
        }
        return replies
    }

    private func lostConnection() -> RedisPresenceError {
        let reason = self.context.map { String(cString: chatd_redis_errstr($0)) } ?? "not connected"
        self.close()
        return RedisPresenceError(code: .connectionLost, message: "lost the connection to Redis at \(self.endpoint): \(reason)")
    }

    private var endpoint: String { "\(self.configuration.host):\(self.configuration.port)" }
}

/// A user as registered by one node.
private struct NodeUser: Hashable {
    var node: NodeID
    var user: UserID
}

extension RedisPresenceError {
    func withContext(_ context: String) -> RedisPresenceError {
        RedisPresenceError(code: self.code, message: "\(context): \(self.message)")
    }
}
