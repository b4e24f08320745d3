import ChatAdapterSupport
import ChatDomain
import Testing

@Suite("Adapter support")
struct AdapterSupportTests {
    @Test("The backoff allows an attempt at once, then waits from initial, doubling up to maximum; a success resets it")
    func backoff() {
        var backoff = ReconnectBackoff(.init(initial: .milliseconds(100), maximum: .milliseconds(350)))
        let start = ContinuousClock.now
        #expect(backoff.remaining(at: start) == nil)
        var waits: [Duration] = []
        var now = start
        for _ in 0..<4 {
            backoff.failed(at: now)
            waits.append(backoff.remaining(at: now) ?? .zero)
            #expect(backoff.remaining(at: now + waits.last!) == nil, "an attempt is allowed once the wait is over")
            now += waits.last!
        }
        #expect(waits == [.milliseconds(100), .milliseconds(200), .milliseconds(350), .milliseconds(350)])
        backoff.succeeded()
        #expect(backoff.remaining(at: now) == nil)
        backoff.failed(at: now)
        #expect(backoff.remaining(at: now) == .milliseconds(100))
    }

    struct Refused: AdapterError {
        var chatError: ChatError { ChatError(.internalError, "refused", underlying: self) }
    }

    @Test("Blocking calls run off the cooperative pool; adapter errors become the engine's, a stopped pool is unavailable")
    func threads() async throws {
        let threads = BlockingThreads(role: "test store")
        #expect(try await threads.run { 6 * 7 } == 42)
        do {
            _ = try await threads.run { throw Refused() }
        } catch {
            #expect(error.code == .internalError)
        }
        await threads.shutDown()
        do {
            _ = try await threads.run { 1 }
            Issue.record("a call after shutDown must fail")
        } catch {
            #expect(error.code == .unavailable && error.message.contains("test store"))
        }
    }
}
