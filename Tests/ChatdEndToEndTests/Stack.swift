import ChatScenarioKit
import Testing

/// How chatd is run for a black-box scenario: every scenario runs in both.
enum Mode: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// Nothing configured: the in-memory adapters.
    case embedded
    /// RabbitMQ, Redis and the MongoDB-wire server, each on a loopback port of the test's own.
    case fullStack

    var testDescription: String { self.rawValue }
}

/// A backing service of the full stack, for the outage scenarios.
enum Service: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case rabbitmq, redis, mongodb

    var testDescription: String { self.rawValue }
}

/// A running chatd and, in full-stack mode, the servers it uses.
struct Stack: Sendable {
    let mode: Mode
    let chatd: ChatdProcess
    var mongo: MongoTestServer?
    var redis: RedisTestServer?
    var rabbit: RabbitTestServer?

    /// Stops `service` (as a crash or an operator would).
    func stop(_ service: Service) async {
        switch service {
        case .rabbitmq: await self.rabbit?.stop()
        case .redis: await self.redis?.stop()
        case .mongodb: await self.mongo?.stop()
        }
    }

    /// Starts `service` again with its data.
    func restart(_ service: Service) async throws {
        switch service {
        case .rabbitmq: try await self.rabbit?.restart()
        case .redis: try await self.redis?.restart()
        case .mongodb: try await self.mongo?.restart()
        }
    }
}

/// Runs `body` with chatd in `mode` (and the servers it needs), then stops everything whatever happened. Run
/// by hand without a server, a full-stack scenario says why and returns early; in CI it fails.
func withStack(_ mode: Mode, environment: [String: String] = [:], _ body: (Stack) async throws -> Void) async throws {
    switch mode {
    case .embedded:
        try await withChatd(environment: environment) { chatd in
            try await body(Stack(mode: mode, chatd: chatd))
        }
    case .fullStack:
        // The store keeps its data in a file, so the store outage scenario can restart it.
        try await withMongoServer(persistent: true) { mongo in
            try await withRedisServer { redis in
                try await withRabbitServer { rabbit in
                    let services = FullStackTests.environment(mongo: mongo, rabbit: rabbit, redis: redis)
                    try await withChatd(environment: services.merging(environment) { $1 }) { chatd in
                        try await body(Stack(mode: mode, chatd: chatd, mongo: mongo, redis: redis, rabbit: rabbit))
                    }
                }
            }
        }
    }
}
