import ChatDomain
import ChatPresenceRedis
import ChatScenarioKit
import Foundation
import Logging
import Testing

/// The Redis presence store against a real redis-server on loopback.
@Suite("Redis presence store")
struct RedisPresenceStoreTests {
    private static func record(_ user: UserID, _ connection: ConnectionID, on node: NodeID) -> PresenceRecord {
        PresenceRecord(userID: user, connectionID: connection, nodeID: node, since: Date(timeIntervalSince1970: 1_767_693_600.123))
    }

    @Test("One and several connections of a user, held by two nodes")
    func twoNodes() async throws {
        try await withRedisServer { server in
            let nodeA = server.makeStore(label: "node-a")
            let nodeB = server.makeStore(label: "node-b")
            try await nodeA.register(Self.record("alice", "a1", on: "node-a"))
            try await nodeB.register(Self.record("alice", "a2", on: "node-b"))
            try await nodeB.register(Self.record("bob", "b1", on: "node-b"))

            var online = try await nodeA.lookup(["alice", "bob", "carol"])
            #expect(online["alice"]?.map(\.nodeID) == ["node-a", "node-b"])
            #expect(online["alice"]?.first == Self.record("alice", "a1", on: "node-a"), "the record comes back whole")
            #expect(online["bob"]?.map(\.connectionID) == ["b1"])
            #expect(online["carol"] == [])

            try await nodeA.unregister(connection: "a1", of: "alice", node: "node-a")
            online = try await nodeB.lookup(["alice"])
            #expect(online["alice"]?.map(\.connectionID) == ["a2"], "still online through the other node")
            try await nodeB.unregister(connection: "a2", of: "alice", node: "node-b")
            #expect(try await nodeA.lookup(["alice"])["alice"] == [])
        }
    }

    @Test("A node that stops heartbeating takes its users offline after the TTL, and its entries are cleaned up")
    func nodeCrash() async throws {
        try await withRedisServer { server in
            // A TTL long enough for a loaded two-core machine to look up in time, short enough for a test.
            // (6 s: the suite runs beside the fuzz and load tests on two cores, right after a clean build in CI,
            // and 4 s once passed between a registration and the lookup after it.)
            let crashing = server.makeStore { $0.presenceTTL = .seconds(6) }
            let survivor = server.makeStore { $0.presenceTTL = .seconds(6) }
            try await crashing.register(Self.record("carol", "c1", on: "node-crash"))
            try await survivor.register(Self.record("dave", "d1", on: "node-ok"))
            #expect(try await survivor.lookup(["carol"])["carol"]?.count == 1)

            await crashing.close()  // no unregister, no more heartbeats: a crash
            let expiry = ContinuousClock.now + .milliseconds(6600)
            while ContinuousClock.now < expiry {
                try await survivor.heartbeat(node: "node-ok")
                try await Task.sleep(for: .milliseconds(400))
            }
            let online = try await survivor.lookup(["carol", "dave"])
            #expect(online["carol"] == [], "offline once the crashed node's heartbeat expired")
            #expect(online["dave"]?.count == 1, "a node that heartbeats keeps its users")
            #expect(try await server.cli("HLEN", "chatd:presence:user:carol") == "0", "the dead entry was removed")
        }
    }

    @Test("A node restarted under the same id does not bring back its earlier connections")
    func restartedNode() async throws {
        try await withRedisServer { server in
            let before = server.makeStore()
            try await before.register(Self.record("erin", "old", on: "node-1"))
            await before.close()
            let after = server.makeStore()
            try await after.heartbeat(node: "node-1")
            #expect(try await after.lookup(["erin"])["erin"] == [])
        }
    }

    @Test("An expired node is claimed by one janitor at a time; its connections go, the users left with none are named, then it is forgotten")
    func expiredNodeCleanup() async throws {
        try await withRedisServer { server in
            let dead = server.makeStore()
            let survivor = server.makeStore()
            let other = server.makeStore()
            try await dead.register(Self.record("carol", "c1", on: "node-x"))
            try await dead.register(Self.record("frank", "f1", on: "node-x"))
            try await survivor.register(Self.record("frank", "f2", on: "node-ok"))
            try await other.heartbeat(node: "node-z")
            #expect(try await survivor.claimExpiredNodes(for: "node-ok", lease: .seconds(30)) == [], "every node heartbeats")

            await dead.close()
            // Its heartbeat expires (deleted here rather than waited for).
            _ = try await server.cli("DEL", "chatd:presence:node:node-x")
            #expect(try await survivor.claimExpiredNodes(for: "node-ok", lease: .seconds(30)) == ["node-x"])
            #expect(try await other.claimExpiredNodes(for: "node-z", lease: .seconds(30)) == [], "claimed by node-ok already")

            #expect(try await survivor.removeStaleConnections(of: "node-x") == ["carol"], "frank is still on node-ok")
            #expect(try await server.cli("HLEN", "chatd:presence:user:carol") == "0")
            #expect(try await survivor.lookup(["frank"])["frank"]?.map(\.connectionID) == ["f2"])
            #expect(try await server.cli("SCARD", "chatd:presence:node-users:node-x") == "0")
            #expect(try await survivor.removeStaleConnections(of: "node-x") == [], "a second pass finds nothing")

            try await survivor.forgetExpiredNode("node-x")
            #expect(try await server.cli("SISMEMBER", "chatd:presence:nodes", "node-x") == "0")
            #expect(try await server.cli("EXISTS", "chatd:presence:janitor:node-x") == "0", "the claim ended")
            #expect(try await other.claimExpiredNodes(for: "node-z", lease: .seconds(30)) == [], "nothing left to clean up")
        }
    }

    @Test("A node restarted under its id removes its previous life's connections, naming the users it left offline")
    func previousLife() async throws {
        try await withRedisServer { server in
            let before = server.makeStore()
            try await before.register(Self.record("erin", "e-old", on: "node-1"))
            try await before.register(Self.record("gina", "g-old", on: "node-1"))
            await before.close()
            let after = server.makeStore()
            try await after.register(Self.record("gina", "g-new", on: "node-1"))
            #expect(try await after.removeStaleConnections(of: "node-1") == ["erin"], "gina is back on this node")
            #expect(try await server.cli("HKEYS", "chatd:presence:user:gina") == "g-new")
            #expect(try await after.claimExpiredNodes(for: "node-2", lease: .seconds(30)) == [], "node-1 is alive")
        }
    }

    @Test("A heartbeat that finds this node's key expired (paused longer than the TTL) registers its connections again")
    func heartbeatAfterExpiry() async throws {
        try await withRedisServer { server in
            let paused = server.makeStore()
            let janitor = server.makeStore()
            try await paused.register(Self.record("hank", "h1", on: "node-p"))
            _ = try await server.cli("DEL", "chatd:presence:node:node-p")
            #expect(try await janitor.removeStaleConnections(of: "node-p") == ["hank"], "another node cleaned up meanwhile")
            #expect(try await janitor.lookup(["hank"])["hank"] == [])
            try await paused.heartbeat(node: "node-p")
            #expect(try await janitor.lookup(["hank"])["hank"]?.map(\.connectionID) == ["h1"], "back without reconnecting")
            #expect(try await server.cli("SISMEMBER", "chatd:presence:node-users:node-p", "hank") == "1")
            // A normal disconnect takes hank out of the node's users again.
            try await paused.unregister(connection: "h1", of: "hank", node: "node-p")
            #expect(try await server.cli("SCARD", "chatd:presence:node-users:node-p") == "0")
        }
    }

    @Test("A batch lookup of 1,000 users is one round trip")
    func batchLookup() async throws {
        try await withRedisServer { server in
            let store = server.makeStore()
            let users = (0..<1000).map { UserID("user-\($0)") }
            for user in users.prefix(500) { try await store.register(Self.record(user, ConnectionID("c-\(user)"), on: "n")) }

            let tripsBefore = try await store.roundTripCount()
            let scriptCallsBefore = try await server.calls(of: "evalsha")
            let online = try await store.lookup(users)
            #expect(try await store.roundTripCount() - tripsBefore == 1)
            #expect(try await server.calls(of: "evalsha") - scriptCallsBefore == 1)
            #expect(online.count == 1000)
            #expect(online.values.count { $0.count == 1 } == 500)
        }
    }

    @Test("Redis stopped: calls fail fast with unavailable; restarted: connections are registered again by themselves")
    func stopAndRestart() async throws {
        try await withRedisServer { server in
            let store = server.makeStore()
            try await store.register(Self.record("frank", "f1", on: "node-1"))

            await server.stop()
            for _ in 0..<3 {
                let start = ContinuousClock.now
                do {
                    _ = try await store.lookup(["frank"])
                    Issue.record("lookup succeeded with Redis stopped")
                } catch let error as ChatError {
                    #expect(error.code == .unavailable)
                    #expect(error.message.contains("Redis"))
                }
                #expect(ContinuousClock.now - start < .seconds(1), "fails fast")
            }

            try await server.restart()
            #expect(try await server.cli("EXISTS", "chatd:presence:user:frank") == "0", "Redis lost everything")
            await eventually("the store reconnects by itself") { (try? await store.heartbeat(node: "node-1")) != nil }
            let online = try await store.lookup(["frank"])
            #expect(online["frank"]?.map(\.connectionID) == ["f1"], "registered again without calling register")
        }
    }

    @Test("A wrong or missing password is an error that says so")
    func wrongPassword() async throws {
        try await withRedisServer(password: "s3cret") { server in
            let wrong = server.makeStore { $0.password = "nope" }
            let missing = server.makeStore { $0.password = nil }
            for (store, expected) in [(wrong, "password"), (missing, "NOAUTH")] {
                do {
                    try await store.heartbeat(node: "n")
                    Issue.record("heartbeat succeeded without the right password")
                } catch let error as ChatError {
                    #expect(error.code == .unavailable)
                    #expect(error.message.contains(expected), "\(error.message)")
                    #expect(error.message.contains("REDIS_PASSWORD"))
                    #expect(!error.message.contains("s3cret") && !error.message.contains("nope"), "no secret in the message")
                }
            }
            try await server.makeStore().heartbeat(node: "n")
        }
    }

    @Test("The product scenarios pass with Redis presence", arguments: ProductScenario.all)
    func productScenarios(_ scenario: ProductScenario) async throws {
        try await withRedisServer { server in
            let store = server.makeStore { $0.keyPrefix = "scenario-\(UUID().uuidString.prefix(8))" }
            try await scenario.run { store }
        }
    }
}
