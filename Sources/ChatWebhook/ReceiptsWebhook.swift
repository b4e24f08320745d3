public import ChatDomain
import AsyncHTTPClient
import Crypto
public import Foundation
public import Logging
public import Metrics
import NIOCore
import NIOHTTP1
public import ServiceLifecycle

/// Posts the receipt events waiting in a ``ChatDomain/ReceiptOutbox`` to the receipts webhook, oldest first, in
/// batches `{"events": [...]}` signed with `X-Chatd-Signature: sha256=<hex HMAC-SHA256 of the body>`.
///
/// At least once: a batch leaves the outbox only after a 2xx answer. Timeouts, connection errors, 5xx and 429 are
/// retried with capped exponential backoff (a `Retry-After` in seconds is honoured) for up to
/// ``ReceiptsWebhookConfiguration/maxAge``; any other 4xx is logged and the batch dropped (the receiver refuses it,
/// and retrying cannot change that). Event ids stay the same across retries, so the receiver can deduplicate.
public final class ReceiptsWebhook: Service {
    private let configuration: ReceiptsWebhookConfiguration
    private let outbox: any ReceiptOutbox
    private let wallClock: any WallClock
    private let logger: Logger
    private let posted: Counter
    private let retried: Counter
    private let droppedRejected: Counter
    private let droppedExpired: Counter
    private let depth: Gauge
    private let latency: Metrics.Timer

    /// A dispatcher reading `outbox`; metrics go to `metrics` (the process's factory by default).
    public init(
        configuration: ReceiptsWebhookConfiguration,
        outbox: any ReceiptOutbox,
        wallClock: any WallClock = SystemWallClock(),
        logger: Logger,
        metrics: any MetricsFactory = MetricsSystem.factory
    ) {
        self.configuration = configuration
        self.outbox = outbox
        self.wallClock = wallClock
        self.logger = logger
        self.posted = Counter(label: "chatd_webhook_events_posted_total", factory: metrics)
        self.retried = Counter(label: "chatd_webhook_retries_total", factory: metrics)
        self.droppedRejected = Counter(label: "chatd_webhook_events_dropped_total", dimensions: [("reason", "rejected")], factory: metrics)
        self.droppedExpired = Counter(label: "chatd_webhook_events_dropped_total", dimensions: [("reason", "expired")], factory: metrics)
        self.depth = Gauge(label: "chatd_webhook_outbox_depth", factory: metrics)
        self.latency = Metrics.Timer(label: "chatd_webhook_post_duration_seconds", factory: metrics)
    }

    /// Posts until graceful shutdown or cancellation; a batch in flight then is posted again after the restart.
    public func run() async throws {
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(redirectConfiguration: .disallow))
        self.logger.info(
            "Receipts webhook on",
            metadata: ["webhook.url": "\(Self.redacted(self.configuration.url))", "webhook.signed": "\(self.configuration.secret != nil)"]
        )
        await cancelWhenGracefulShutdown {
            await self.loop(client)
        }
        try? await client.shutdown()
    }

    private func loop(_ client: HTTPClient) async {
        var backoff = self.configuration.initialBackoff
        var failing = false
        while !Task.isCancelled {
            let events: [ReceiptEvent]
            do {
                events = try await self.outbox.oldest(self.configuration.batchSize)
                self.depth.record(try await self.outbox.count())
            } catch {
                self.logger.warning("Receipts webhook outbox unreadable; retrying", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, self.configuration.maxBackoff)
                continue
            }
            guard !events.isEmpty else {
                try? await Task.sleep(for: self.configuration.idlePoll)
                continue
            }
            if await self.dropExpired(events) { continue }
            switch await self.post(events, with: client) {
            case .accepted:
                if failing {
                    self.logger.info("Receipts webhook accepts events again", metadata: ["webhook.events": "\(events.count)"])
                    failing = false
                }
                self.posted.increment(by: events.count)
                await self.remove(events)
                backoff = self.configuration.initialBackoff
            case .refused(let status):
                self.logger.error(
                    "Receipts webhook refused a batch; dropped (fix the receiver: only 2xx accepts, 5xx and 429 are retried)",
                    metadata: ["webhook.status": "\(status)", "webhook.events": "\(events.count)"]
                )
                self.droppedRejected.increment(by: events.count)
                await self.remove(events)
            case .retry(let reason, let retryAfter):
                self.retried.increment()
                let wait = min(max(retryAfter ?? .zero, backoff), self.configuration.maxBackoff)
                if !failing {
                    self.logger.warning(
                        "Receipts webhook unreachable or failing; events wait in the outbox and are retried",
                        metadata: ["webhook.reason": "\(reason)", "webhook.retry_in_ms": "\(wait.wholeMilliseconds)"]
                    )
                    failing = true
                } else {
                    self.logger.debug("Receipts webhook retry", metadata: ["webhook.reason": "\(reason)", "webhook.retry_in_ms": "\(wait.wholeMilliseconds)"])
                }
                try? await Task.sleep(for: wait)
                backoff = min(backoff * 2, self.configuration.maxBackoff)
            }
        }
    }

    /// Drops the events older than the retry window; true when some were.
    private func dropExpired(_ events: [ReceiptEvent]) async -> Bool {
        let oldest = self.wallClock.now().addingTimeInterval(-Double(self.configuration.maxAge.wholeMilliseconds) / 1000)
        let expired = events.filter { $0.at < oldest }
        guard !expired.isEmpty else { return false }
        self.logger.warning(
            "Receipt events older than the webhook's retry window dropped",
            metadata: ["webhook.events": "\(expired.count)", "webhook.max_age_s": "\(self.configuration.maxAge.wholeMilliseconds / 1000)"]
        )
        self.droppedExpired.increment(by: expired.count)
        await self.remove(expired)
        return true
    }

    private func remove(_ events: [ReceiptEvent]) async {
        do {
            try await self.outbox.remove(events.map(\.id))
        } catch {
            // They stay and are posted again: at least once.
            self.logger.warning("Posted receipt events could not be removed from the outbox; they will be posted again", metadata: ["error": "\(error)"])
        }
    }

    enum Outcome {
        case accepted
        case refused(status: UInt)
        case retry(reason: String, retryAfter: Duration?)
    }

    private struct Batch: Encodable {
        var events: [ReceiptEvent]
    }

    private func post(_ events: [ReceiptEvent], with client: HTTPClient) async -> Outcome {
        let body: Data
        do {
            body = try Self.encoder.encode(Batch(events: events))
        } catch {
            return .refused(status: 0)
        }
        var request = HTTPClientRequest(url: self.configuration.url.absoluteString)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "chatd-receipts-webhook")
        request.headers.add(name: "X-Chatd-Delivery", value: Self.batchID(events))
        if let secret = self.configuration.secret {
            request.headers.add(name: "X-Chatd-Signature", value: Self.signature(of: body, secret: secret))
        }
        request.body = .bytes(ByteBuffer(bytes: body))
        let started = ContinuousClock.now
        do {
            let response = try await client.execute(request, timeout: .nanoseconds(self.configuration.timeout.wholeNanoseconds))
            // The body is not used; read it so the connection can be reused.
            _ = try? await response.body.collect(upTo: 64 * 1024)
            self.latency.recordNanoseconds((ContinuousClock.now - started).wholeNanoseconds)
            let status = response.status.code
            switch status {
            case 200..<300:
                return .accepted
            case 429, 500..<600:
                return .retry(reason: "HTTP \(status)", retryAfter: response.headers.first(name: "Retry-After").flatMap(Self.retryAfter))
            default:
                return .refused(status: status)
            }
        } catch {
            return .retry(reason: "\(error)", retryAfter: nil)
        }
    }

    /// `sha256=<hex>`: the HMAC-SHA256 of `body` keyed with `secret`, as `X-Chatd-Signature` carries it.
    public static func signature(of body: Data, secret: String) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: Data(secret.utf8)))
        return "sha256=" + code.map { String(format: "%02x", $0) }.joined()
    }

    /// The same events give the same id, so a retried batch can be recognised.
    static func batchID(_ events: [ReceiptEvent]) -> String {
        let digest = SHA256.hash(data: Data(events.map(\.id.hexString).joined(separator: ",").utf8))
        return digest.prefix(16).map { String(format: "%02x", $0) }.joined()
    }

    /// `Retry-After` in seconds (the HTTP-date form is treated as absent).
    static func retryAfter(_ value: String) -> Duration? {
        guard let seconds = Int(value.trimmingCharacters(in: .whitespaces)), seconds >= 0 else { return nil }
        return .seconds(seconds)
    }

    /// The URL without user info, query or fragment, for the log (they may hold a token).
    public static func redacted(_ url: URL) -> String {
        var components = URLComponents(url: url, resolvingAgainstBaseURL: false)
        components?.user = nil
        components?.password = nil
        components?.query = nil
        components?.fragment = nil
        return components?.string ?? "(unprintable URL)"
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()
}
