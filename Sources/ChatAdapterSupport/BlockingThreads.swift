public import ChatDomain
import NIOPosix

/// An adapter error that knows which ``ChatDomain/ChatError`` it is to the engine (`unavailable` for an outage,
/// `internal_error` for a refusal).
public protocol AdapterError: Error {
    /// The error as the engine sees it, with this error as its `underlying` one.
    var chatError: ChatError { get }
}

/// Threads of an adapter's own for a C client's blocking calls, so they never run on Swift's cooperative pool.
///
/// Every call goes through ``run(_:)``: an ``AdapterError`` becomes its ``AdapterError/chatError``, a
/// ``ChatDomain/ChatError`` passes through, and a call made after ``shutDown()`` fails with `unavailable`.
public final class BlockingThreads: Sendable {
    private let pool: NIOThreadPool
    /// What the adapter is to the engine ("offline queue", "presence store", "message store"), for errors.
    private let role: String

    /// Starts `count` threads (at least one) for an adapter playing `role`.
    public init(count: Int = 1, role: String) {
        self.pool = NIOThreadPool(numberOfThreads: max(1, count))
        self.role = role
        self.pool.start()
    }

    /// Runs `body` on one of the threads and returns its result.
    /// - Throws: ``ChatDomain/ChatError``: what `body` threw, as the engine sees it.
    public func run<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) async throws(ChatError) -> Result {
        do {
            return try await self.pool.runIfActive(body)
        } catch let error as any AdapterError {
            throw error.chatError
        } catch let error as ChatError {
            throw error
        } catch {
            throw ChatError(.unavailable, "the \(self.role) is closed", underlying: error)
        }
    }

    /// Runs `body` on one of the threads if they still run; nothing happens after ``shutDown()``.
    public func runIfRunning(_ body: @escaping @Sendable () -> Void) async {
        _ = try? await self.pool.runIfActive(body)
    }

    /// Runs `body` on one of the threads without waiting for it; `cancelled` runs instead (on some thread) when
    /// the threads were shut down first.
    public func submit(_ body: @escaping @Sendable () -> Void, cancelled: @escaping @Sendable () -> Void) {
        self.pool.submit { state in
            switch state {
            case .active: body()
            case .cancelled: cancelled()
            }
        }
    }

    /// Stops the threads once the calls already given to them are done.
    public func shutDown() async {
        try? await self.pool.shutdownGracefully()
    }
}
