import Synchronization

/// A ``NodeRelay`` between engines in one process (tests, and embedders that run several engines): each node's
/// inbox exists while its engine reads it. Nothing survives the process, like the other in-memory adapters;
/// forwarded entries not yet delivered when a reader stops are dropped, and their recipients catch them up from
/// the store.
public final class InMemoryNodeRelay: NodeRelay {
    private struct Inbox {
        var id: Int
        var continuation: AsyncStream<[RelayMessage]>.Continuation
    }

    private struct State {
        var inboxes: [NodeID: Inbox] = [:]
        var nextID = 0
        var forwarded = 0
    }

    private let state = Mutex(State())

    /// Creates a relay with no inboxes.
    public init() {}

    /// Whether `node` reads its inbox now.
    public func hasInbox(_ node: NodeID) -> Bool {
        self.state.withLock { $0.inboxes[node] != nil }
    }

    /// Entries handed to an inbox so far.
    public var forwardedCount: Int {
        self.state.withLock { $0.forwarded }
    }

    public func forward(_ entries: [QueueEntry], to node: NodeID) async throws -> Set<Int> {
        let taken = self.state.withLock { state -> Bool in
            guard let inbox = state.inboxes[node], case .enqueued = inbox.continuation.yield(entries.map(RelayMessage.entry)) else {
                return false
            }
            state.forwarded += entries.count
            return true
        }
        return taken ? [] : Set(entries.indices)
    }

    public func announce(_ notice: PresenceNotice, to node: NodeID) async throws {
        _ = self.state.withLock { state in state.inboxes[node]?.continuation.yield([.presence(notice)]) }
    }

    public func receive(for node: NodeID, deliver: @escaping @Sendable ([RelayMessage]) async -> Void) async throws {
        let (stream, continuation) = AsyncStream<[RelayMessage]>.makeStream()
        let id = self.state.withLock { state in
            defer { state.nextID += 1 }
            state.inboxes[node]?.continuation.finish()
            state.inboxes[node] = Inbox(id: state.nextID, continuation: continuation)
            return state.nextID
        }
        defer {
            self.state.withLock { state in
                if state.inboxes[node]?.id == id { state.inboxes[node] = nil }
            }
        }
        await withTaskCancellationHandler {
            for await batch in stream { await deliver(batch) }
        } onCancel: {
            continuation.finish()
        }
    }
}
