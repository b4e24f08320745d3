public import Foundation

/// Where and how chatd posts receipt events.
public struct ReceiptsWebhookConfiguration: Sendable {
    /// The receiver's URL (`http` or `https`).
    public let url: URL
    /// The key of each batch's `X-Chatd-Signature` (HMAC-SHA256 of the body); nil posts unsigned batches.
    public var secret: String?
    /// The most events in one POST.
    public var batchSize: Int = 100
    /// How long one POST may take before it counts as failed (and is retried).
    public var timeout: Duration = .seconds(10)
    /// The first wait before a retry; each further failure doubles it, up to ``maxBackoff``.
    public var initialBackoff: Duration = .milliseconds(500)
    /// The longest wait between retries (a `Retry-After` is honoured up to this too).
    public var maxBackoff: Duration = .seconds(60)
    /// How long an event is retried before it is given up on (dropped with a warning and a metric).
    public var maxAge: Duration = .seconds(24 * 3600)
    /// How often an empty outbox is looked at again.
    public var idlePoll: Duration = .milliseconds(250)

    /// A configuration posting to `url`.
    /// - Throws: ``ReceiptsWebhookError`` when `url` is not an absolute `http` or `https` URL with a host.
    public init(url: String, secret: String?) throws(ReceiptsWebhookError) {
        guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased(), ["http", "https"].contains(scheme),
            let host = parsed.host, !host.isEmpty
        else {
            throw ReceiptsWebhookError(
                "RECEIPTS_WEBHOOK_URL must be an absolute http:// or https:// URL with a host, like https://hooks.example.com/chatd (got '\(url.prefix(200))')"
            )
        }
        self.url = parsed
        self.secret = secret.flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// A webhook setting that cannot work; the message names it and says what to set.
public struct ReceiptsWebhookError: Error, CustomStringConvertible, Sendable {
    /// What is wrong and what to do.
    public let message: String

    init(_ message: String) { self.message = message }

    public var description: String { self.message }
}
