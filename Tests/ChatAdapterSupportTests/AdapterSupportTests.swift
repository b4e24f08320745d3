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

    @Test("A pump queue asks for one pump at a time, hands batches in order within their limits, and asks again once a pump ended")
    func pumpQueue() {
        let queue = PumpQueue<Int>()
        #expect(queue.add(1), "the first request needs a pump")
        #expect(!queue.add(2) && !queue.add(30) && !queue.add(4), "one is scheduled already")
        // At most 3 per batch and a weight of 32: 1 + 2 fit, 30 would not.
        #expect(queue.takeBatch(maxCount: 3, maxWeight: 32, weight: { $0 }) == [1, 2])
        // A batch holds at least one request, whatever it weighs.
        #expect(queue.takeBatch(maxCount: 3, maxWeight: 10, weight: { $0 }) == [30])
        queue.putBack(3)
        #expect(queue.takeFirst() == 3)
        #expect(!queue.stopIfEmpty(), "4 still waits: the pump goes on")
        #expect(queue.takeBatch(maxCount: 3) == [4])
        #expect(queue.takeBatch(maxCount: 3) == nil, "nothing left: the turn ends")
        #expect(queue.add(5), "after the turn ended the next request needs a pump again")
        #expect(queue.takeAll() == [5])
        #expect(queue.add(6), "takeAll leaves no pump scheduled")
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
