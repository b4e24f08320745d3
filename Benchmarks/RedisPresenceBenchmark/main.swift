// Measures the Redis presence store: lookups per second, one user per lookup and in batches.
// Run it with ./scripts/bench-presence.sh, which starts a redis-server on loopback for it.
import ChatDomain
import ChatPresenceRedis
import Foundation
import Logging

let arguments = CommandLine.arguments
guard arguments.count >= 2, let port = Int(arguments[1]) else {
    print("usage: redis-presence-benchmark <redis port> [seconds per figure, default 3]")
    exit(2)
}
let seconds = arguments.count >= 3 ? Double(arguments[2]) ?? 3 : 3

var configuration = RedisPresenceConfiguration(host: "127.0.0.1", port: port)
configuration.keyPrefix = "bench"
let store = RedisPresenceStore(configuration: configuration, logger: Logger(label: "bench"))

// 10,000 users, half of them online with one connection each.
let users = (0..<10_000).map { UserID("user-\($0)") }
for (index, user) in users.enumerated() where index.isMultiple(of: 2) {
    try await store.register(
        PresenceRecord(userID: user, connectionID: ConnectionID("c-\(index)"), nodeID: "bench-node", since: Date())
    )
}

/// Runs `lookup` repeatedly for `seconds` and returns lookups per second.
func measure(batch: Int) async throws -> (lookupsPerSecond: Double, usersPerSecond: Double, microsecondsPerLookup: Double) {
    var lookups = 0
    var offset = 0
    let clock = ContinuousClock()
    let start = clock.now
    let deadline = start + .milliseconds(Int(seconds * 1000))
    while clock.now < deadline {
        let slice = (0..<batch).map { users[(offset + $0) % users.count] }
        offset += batch
        _ = try await store.lookup(slice)
        lookups += 1
    }
    let elapsed = (clock.now - start) / .seconds(1)
    let perSecond = Double(lookups) / elapsed
    return (perSecond, perSecond * Double(batch), 1_000_000 / perSecond)
}

print("Redis presence lookups, one connection, sequential calls, \(seconds) s per row")
print("batch  lookups/s  users/s    µs/lookup")
for batch in [1, 10, 100, 1000] {
    let result = try await measure(batch: batch)
    print(
        String(batch).padding(toLength: 7, withPad: " ", startingAt: 0)
            + String(Int(result.lookupsPerSecond)).padding(toLength: 11, withPad: " ", startingAt: 0)
            + String(Int(result.usersPerSecond)).padding(toLength: 11, withPad: " ", startingAt: 0)
            + String(format: "%.1f", result.microsecondsPerLookup)
    )
}
await store.close()
