import ChatDomain
import Synchronization

/// Calls waiting for one of the store's threads, taken in batches: concurrent calls of one kind share one visit to
/// the thread and one command, instead of a hop and a round trip each.
///
/// Callers add requests from any task; a pump (``MongoMessageStore``'s, on one of the store's threads) takes them
/// in batches. At most one pump per queue is scheduled at a time: ``add(_:)`` says when a new one is needed.
final class BatchQueue<Request: Sendable>: Sendable {
    /// At most this many requests per batch.
    let maxCount: Int
    /// At most this much weight per batch (at least one request), as ``weight`` counts it.
    let maxWeight: Int
    private let weight: @Sendable (Request) -> Int

    private struct State {
        var requests: [Request] = []
        var scheduled = false
    }

    private let state = Mutex(State())

    init(maxCount: Int, maxWeight: Int = .max, weight: @escaping @Sendable (Request) -> Int = { _ in 1 }) {
        self.maxCount = maxCount
        self.maxWeight = maxWeight
        self.weight = weight
    }

    /// Queues `request`; true when no pump is scheduled, so the caller must schedule one.
    func add(_ request: Request) -> Bool {
        self.state.withLock { state in
            state.requests.append(request)
            defer { state.scheduled = true }
            return !state.scheduled
        }
    }

    /// The oldest requests, up to ``maxCount`` and ``maxWeight`` (at least one); nil when none wait, which ends
    /// the pump's turn (the next ``add(_:)`` schedules another).
    func takeBatch() -> [Request]? {
        self.state.withLock { state in
            guard !state.requests.isEmpty else {
                state.scheduled = false
                return nil
            }
            var count = 0
            var total = 0
            for request in state.requests {
                let weight = self.weight(request)
                guard count < self.maxCount, count == 0 || total + weight <= self.maxWeight else { break }
                count += 1
                total += weight
            }
            let batch = Array(state.requests.prefix(count))
            state.requests.removeFirst(count)
            return batch
        }
    }

    /// Takes every waiting request (the store's threads are gone, so they must be failed) and schedules no more
    /// pumps.
    func takeAll() -> [Request] {
        self.state.withLock { state in
            defer {
                state.requests.removeAll()
                state.scheduled = false
            }
            return state.requests
        }
    }
}

/// A call waiting in a ``BatchQueue``, which can be answered with an error.
protocol BatchRequest: Sendable {
    associatedtype Answer: Sendable
    /// Called once, on a store thread.
    var complete: @Sendable (Result<Answer, ChatError>) -> Void { get }
}

extension BatchRequest {
    /// Answers the call with `error`.
    func fail(_ error: ChatError) {
        self.complete(.failure(error))
    }
}

/// One message to insert, and who to tell.
struct InsertRequest: BatchRequest {
    /// How the server took one document of a batch.
    enum Write: Sendable {
        case inserted
        /// Refused as a duplicate key (11000): the error as the server wrote it, for the caller to look into.
        case duplicateKey(BSONDocument)
    }

    /// The message's document, as BSON bytes.
    var document: [UInt8]
    var chatID: ChatID
    var messageID: MessageID
    var complete: @Sendable (Result<Write, ChatError>) -> Void
}

/// One chat to look up, and who to tell.
struct ChatLookup: BatchRequest {
    var id: ChatID
    var complete: @Sendable (Result<Chat?, ChatError>) -> Void
}

/// Which of `users` block `sender`, and who to tell.
struct BlockerLookup: BatchRequest {
    var sender: UserID
    var users: [UserID]
    var complete: @Sendable (Result<Set<UserID>, ChatError>) -> Void
}
