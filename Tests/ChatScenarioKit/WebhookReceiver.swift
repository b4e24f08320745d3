import Crypto
public import Foundation
import Hummingbird
import Logging
import Synchronization

/// A local HTTP server standing in for a receipts webhook receiver: it records every POST and answers with the
/// statuses it was told to, in order, then 200. A 429 comes with `Retry-After: 1`.
public final class WebhookReceiver: Sendable {
    /// One request as received.
    public struct Request: Sendable {
        /// Header values by lowercased name.
        public var headers: [String: String]
        public var body: Data
        /// What the receiver answered.
        public var status: Int
        /// When it arrived.
        public var at: ContinuousClock.Instant
    }

    /// The port it listens on (127.0.0.1).
    public let port: Int
    private let state: Mutex<(answers: [Int], requests: [Request])>

    init(port: Int, answers: [Int]) {
        self.port = port
        self.state = Mutex((answers, []))
    }

    /// The webhook URL to configure.
    public var url: String { "http://127.0.0.1:\(self.port)/hooks/chatd" }

    /// Every request so far.
    public var requests: [Request] { self.state.withLock { $0.requests } }

    /// The events of the requests answered with 2xx, in arrival order (with duplicates, if any were posted twice).
    public var acceptedEvents: [[String: String]] {
        self.requests.filter { (200..<300).contains($0.status) }.flatMap { request -> [[String: String]] in
            guard let object = try? JSONSerialization.jsonObject(with: request.body) as? [String: Any],
                let events = object["events"] as? [[String: Any]]
            else { return [] }
            return events.map { $0.compactMapValues { $0 as? String } }
        }
    }

    /// Answers the next requests with `statuses`, in order, then 200 again.
    public func answer(_ statuses: [Int]) {
        self.state.withLock { $0.answers = statuses }
    }

    fileprivate func record(headers: [String: String], body: Data) -> Int {
        self.state.withLock { state in
            let status = state.answers.isEmpty ? 200 : state.answers.removeFirst()
            state.requests.append(Request(headers: headers, body: body, status: status, at: .now))
            return status
        }
    }
}

/// Runs `body` with a receiver listening on `port` (0: any free one); it stops when `body` returns.
public func withWebhookReceiver<Result: Sendable>(
    port: Int = 0,
    answers: [Int] = [],
    _ body: @Sendable (WebhookReceiver) async throws -> Result
) async throws -> Result {
    let router = Router()
    let receiver = Mutex<WebhookReceiver?>(nil)
    let bound = Mutex<Int?>(nil)
    router.post("/hooks/chatd") { request, _ -> Response in
        var headers: [String: String] = [:]
        for field in request.headers { headers[field.name.canonicalName] = field.value }
        let buffer = try await request.body.collect(upTo: 16 * 1024 * 1024)
        let status = receiver.withLock { $0 }?.record(headers: headers, body: Data(buffer: buffer)) ?? 503
        return Response(status: HTTPResponse.Status(code: status), headers: status == 429 ? [.retryAfter: "1"] : [:])
    }
    var logger = Logger(label: "webhook-receiver")
    logger.logLevel = .warning
    let app = Application(
        router: router,
        configuration: .init(address: .hostname("127.0.0.1", port: port)),
        onServerRunning: { channel in bound.withLock { $0 = channel.localAddress?.port } },
        logger: logger
    )
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await app.run() }
        defer { group.cancelAll() }
        let deadline = ContinuousClock.now + .seconds(10)
        while bound.withLock({ $0 }) == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        guard let listening = bound.withLock({ $0 }) else { throw TestServerError("the webhook receiver did not start listening within 10 s") }
        let started = WebhookReceiver(port: listening, answers: answers)
        receiver.withLock { $0 = started }
        return try await body(started)
    }
}

/// The signature a receiver expects, computed here as a receiver would (not by chatd's code).
public enum ReceiptSignature {
    /// `sha256=<hex HMAC-SHA256 of body keyed with secret>`.
    public static func expected(_ body: Data, secret: String) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: Data(secret.utf8)))
        return "sha256=" + code.map { String(format: "%02x", $0) }.joined()
    }
}
