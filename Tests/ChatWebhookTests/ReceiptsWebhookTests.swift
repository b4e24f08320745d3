import ChatDomain
import ChatScenarioKit
@testable import ChatWebhook
import Foundation
import Logging
import Metrics
import Testing

@Suite("Receipts webhook")
struct ReceiptsWebhookTests {
    private static let secret = "s3cr3t-for-tests"

    private static func events(_ count: Int, clock: any WallClock = SystemWallClock()) -> [ReceiptEvent] {
        let ids = MessageIDGenerator(clock: clock)
        return (0..<count).map { index in
            ReceiptEvent(
                id: ids.next(),
                kind: index % 2 == 0 ? .delivered : .read,
                messageID: ids.next(),
                chatID: "chat-ab",
                userID: "bob",
                at: clock.now()
            )
        }
    }

    private static func configuration(_ url: String, secret: String? = Self.secret) throws -> ReceiptsWebhookConfiguration {
        var configuration = try ReceiptsWebhookConfiguration(url: url, secret: secret)
        configuration.initialBackoff = .milliseconds(20)
        configuration.maxBackoff = .milliseconds(200)
        configuration.idlePoll = .milliseconds(20)
        configuration.batchSize = 10
        return configuration
    }

    /// Runs a webhook over `outbox` while `body` runs.
    private static func withWebhook(
        _ configuration: ReceiptsWebhookConfiguration,
        outbox: any ReceiptOutbox,
        wallClock: any WallClock = SystemWallClock(),
        logs: LogCapture = LogCapture(),
        _ body: @Sendable () async throws -> Void
    ) async throws {
        let webhook = ReceiptsWebhook(configuration: configuration, outbox: outbox, wallClock: wallClock, logger: logs.logger(), metrics: NOOPMetricsHandler.instance)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await webhook.run() }
            defer { group.cancelAll() }
            try await body()
        }
    }

    @Test("Signed batches: the receiver answers 500 three times, then 200; every event arrives at least once with its id, the retries carry the same delivery id")
    func retriesUntilAccepted() async throws {
        let outbox = InMemoryReceiptOutbox()
        let events = Self.events(25)
        _ = try await outbox.append(events)
        let logs = LogCapture()
        try await withWebhookReceiver(answers: [500, 500, 500]) { receiver in
            try await Self.withWebhook(try Self.configuration(receiver.url), outbox: outbox, logs: logs) {
                await eventually("the outbox to empty", timeout: .seconds(20)) { (try? await outbox.count()) == 0 }
            }
            let requests = receiver.requests
            #expect(requests.prefix(4).map(\.status) == [500, 500, 500, 200])
            #expect(Set(requests.prefix(4).map { $0.headers["x-chatd-delivery"] }).count == 1, "the same batch each time")
            for request in requests {
                #expect(request.headers["content-type"] == "application/json")
                #expect(request.headers["x-chatd-signature"] == ReceiptSignature.expected(request.body, secret: Self.secret))
                #expect(request.headers["x-chatd-signature"] != ReceiptSignature.expected(request.body, secret: "another secret"))
            }
            let accepted = receiver.acceptedEvents
            #expect(Set(accepted.compactMap { $0["id"] }) == Set(events.map(\.id.hexString)), "every event, by its stable id")
            #expect(accepted.first?["type"] == "delivered" && accepted.first?["messageId"] == events[0].messageID.hexString)
            #expect(accepted.first?["chatId"] == "chat-ab" && accepted.first?["userId"] == "bob" && accepted.first?["at"] != nil)
            #expect(accepted.allSatisfy { $0["content"] == nil }, "ids and times, never content")
        }
        #expect(logs.count(of: "Receipts webhook unreachable or failing; events wait in the outbox and are retried") == 1, "one warning per outage")
        #expect(logs.contains("Receipts webhook accepts events again"))
    }

    @Test("429 with Retry-After: 1 waits a second before the retry, although the backoff alone would wait 20 ms")
    func honoursRetryAfter() async throws {
        let outbox = InMemoryReceiptOutbox()
        _ = try await outbox.append(Self.events(3))
        try await withWebhookReceiver(answers: [429]) { receiver in
            var configuration = try Self.configuration(receiver.url)
            configuration.maxBackoff = .seconds(5)  // Retry-After is honoured up to the longest backoff
            try await Self.withWebhook(configuration, outbox: outbox) {
                await eventually("the outbox to empty", timeout: .seconds(20)) { (try? await outbox.count()) == 0 }
            }
            let requests = receiver.requests
            #expect(requests.map(\.status) == [429, 200])
            if requests.count == 2 {
                #expect(requests[1].at - requests[0].at >= .milliseconds(950), "\(requests[1].at - requests[0].at)")
            }
        }
    }

    @Test("A 4xx other than 429 drops the batch with an error line; the events after it still go out")
    func refusedBatchIsDropped() async throws {
        let outbox = InMemoryReceiptOutbox()
        let events = Self.events(15)
        _ = try await outbox.append(events)
        let logs = LogCapture()
        try await withWebhookReceiver(answers: [400]) { receiver in
            try await Self.withWebhook(try Self.configuration(receiver.url), outbox: outbox, logs: logs) {
                await eventually("the outbox to empty", timeout: .seconds(20)) { (try? await outbox.count()) == 0 }
            }
            #expect(receiver.requests.map(\.status) == [400, 200])
            #expect(receiver.acceptedEvents.compactMap { $0["id"] } == events.suffix(5).map(\.id.hexString))
        }
        #expect(logs.contains("Receipts webhook refused a batch; dropped (fix the receiver: only 2xx accepts, 5xx and 429 are retried)", level: .error))
    }

    @Test("Receiver down: events wait in the outbox; once it listens again they all arrive")
    func receiverDownThenBack() async throws {
        let outbox = InMemoryReceiptOutbox()
        let events = Self.events(12)
        _ = try await outbox.append(events)
        // A port that was free a moment ago: nothing listens there until the receiver starts on it.
        let port = try await withWebhookReceiver { $0.port }
        let configuration = try Self.configuration("http://127.0.0.1:\(port)/hooks/chatd")
        try await Self.withWebhook(configuration, outbox: outbox) {
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await outbox.count() == 12, "nothing is lost while the receiver is down")
            try await withWebhookReceiver(port: port) { receiver in
                await eventually("the outbox to empty", timeout: .seconds(20)) { (try? await outbox.count()) == 0 }
                #expect(Set(receiver.acceptedEvents.compactMap { $0["id"] }) == Set(events.map(\.id.hexString)))
            }
        }
    }

    @Test("Events older than the retry window are dropped with a warning instead of posted")
    func oldEventsDropped() async throws {
        let clock = ManualWallClock()
        let outbox = InMemoryReceiptOutbox()
        let old = Self.events(3, clock: clock)
        clock.advance(by: 25 * 3600)
        let fresh = Self.events(2, clock: clock)
        _ = try await outbox.append(old + fresh)
        let logs = LogCapture()
        try await withWebhookReceiver { receiver in
            try await Self.withWebhook(try Self.configuration(receiver.url), outbox: outbox, wallClock: clock, logs: logs) {
                await eventually("the outbox to empty", timeout: .seconds(20)) { (try? await outbox.count()) == 0 }
            }
            #expect(receiver.acceptedEvents.compactMap { $0["id"] } == fresh.map(\.id.hexString))
        }
        #expect(logs.contains("Receipt events older than the webhook's retry window dropped", level: .warning))
    }

    @Test("A URL that cannot work is refused naming the setting")
    func badURL() {
        for url in ["", "not a url", "ftp://example.com/x", "http://", "/relative/path"] {
            #expect(throws: ReceiptsWebhookError.self, "\(url)") { try ReceiptsWebhookConfiguration(url: url, secret: nil) }
        }
        do {
            _ = try ReceiptsWebhookConfiguration(url: "ftp://example.com/x", secret: nil)
        } catch {
            #expect(error.message.contains("RECEIPTS_WEBHOOK_URL"))
        }
        #expect(ReceiptsWebhook.redacted(URL(string: "https://user:pw@hooks.example.com/x?token=abc")!) == "https://hooks.example.com/x")
    }

    @Test("The in-memory outbox is bounded: past its capacity the oldest events go, and the append says how many")
    func boundedOutbox() async throws {
        let outbox = InMemoryReceiptOutbox(capacity: 10)
        let events = Self.events(14)
        #expect(try await outbox.append(Array(events.prefix(8))) == 0)
        #expect(try await outbox.append(Array(events.suffix(6))) == 4)
        #expect(try await outbox.oldest(100) == Array(events.suffix(10)))
    }

    @Test("The engine writes delivered and read events to the outbox: ids, chat, user, time")
    func engineRecordsEvents() async throws {
        let outbox = InMemoryReceiptOutbox()
        let harness = try Harness(receiptOutbox: outbox)
        try await harness.seed()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await harness.service.run() }
            defer { group.cancelAll() }
            let alice = await harness.connect(Harness.alice)
            let bob = await harness.connect(Harness.bob)
            await harness.service.reconnected(bob)
            let sent = try await harness.send("hello", from: alice)
            _ = try await harness.service.markRead(Harness.directChat, upTo: sent.messageID, from: bob)
            await eventually("both events to be in the outbox") { (try? await outbox.count()) == 2 }
            let events = try await outbox.oldest(10)
            #expect(Set(events.map(\.kind)) == [.delivered, .read])
            #expect(events.allSatisfy { $0.messageID == sent.messageID && $0.chatID == Harness.directChat && $0.userID == Harness.bob.id })
            #expect(Set(events.map(\.id)).count == 2)
        }
    }
}
