import Synchronization

/// A ``NodeRelay`` between engines in one process (tests, and embedders that run several engines). A node's inbox
/// exists from its engine's first read until another node takes it over, and keeps what is forwarded while nobody
/// reads it, as a broker's queue does; nothing survives the process, like the other in-memory adapters.
public final class InMemoryNodeRelay: NodeRelay {
    private struct Inbox {
        var pending: [RelayMessage] = []
        /// The reading task's id and its wake-up signal; nil while nobody reads.
        var reader: (id: Int, signal: AsyncStream<Void>.Continuation)?
    }

    private struct State {
        var inboxes: [NodeID: Inbox] = [:]
        var nextReader = 0
        var forwarded = 0
    }

    /// The most messages handed over in one batch, as a broker's prefetch would.
    private static let batchLimit = 256
    private let state = Mutex(State())

    /// Creates a relay with no inboxes.
    public init() {}

    /// Whether `node` reads its inbox now.
    public func hasInbox(_ node: NodeID) -> Bool {
        self.state.withLock { $0.inboxes[node]?.reader != nil }
    }

    /// Whether `node`'s inbox exists (read or not).
    public func inboxExists(_ node: NodeID) -> Bool {
        self.state.withLock { $0.inboxes[node] != nil }
    }

    /// How many messages wait in `node`'s inbox.
    public func pendingCount(of node: NodeID) -> Int {
        self.state.withLock { $0.inboxes[node]?.pending.count ?? 0 }
    }

    /// Entries handed to an inbox so far.
    public var forwardedCount: Int {
        self.state.withLock { $0.forwarded }
    }

    public func forward(_ entries: [QueueEntry], to node: NodeID) async throws -> Set<Int> {
        let taken = self.state.withLock { state -> Bool in
            guard state.inboxes[node] != nil else { return false }
            state.inboxes[node]?.pending += entries.map(RelayMessage.entry)
            state.inboxes[node]?.reader?.signal.yield()
            state.forwarded += entries.count
            return true
        }
        return taken ? [] : Set(entries.indices)
    }

    public func announce(_ notice: PresenceNotice, to node: NodeID) async throws {
        self.state.withLock { state in
            guard state.inboxes[node] != nil else { return }
            state.inboxes[node]?.pending.append(.presence(notice))
            state.inboxes[node]?.reader?.signal.yield()
        }
    }

    public func notify(_ notice: ChatNotice, to node: NodeID) async throws {
        self.state.withLock { state in
            guard state.inboxes[node] != nil else { return }
            state.inboxes[node]?.pending.append(.notice(notice))
            state.inboxes[node]?.reader?.signal.yield()
        }
    }

    public func receive(for node: NodeID, deliver: @escaping @Sendable ([RelayMessage]) async -> Void) async throws {
        let (signals, signal) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = self.state.withLock { state in
            defer { state.nextReader += 1 }
            // A second reader replaces the first, as a restarted node's consumer does.
            var inbox = state.inboxes[node] ?? Inbox()
            inbox.reader?.signal.finish()
            inbox.reader = (state.nextReader, signal)
            state.inboxes[node] = inbox
            return state.nextReader
        }
        defer {
            self.state.withLock { state in
                if state.inboxes[node]?.reader?.id == id { state.inboxes[node]?.reader = nil }
            }
        }
        signal.yield()  // what waited before this reader came
        await withTaskCancellationHandler {
            for await _ in signals {
                while let batch = self.take(from: node, reader: id) { await deliver(batch) }
            }
        } onCancel: {
            signal.finish()
        }
    }

    public func takeOver(inboxOf node: NodeID, deliver: @escaping @Sendable ([RelayMessage]) async -> Void) async throws -> InboxTakeover {
        let left = self.state.withLock { state -> [RelayMessage]? in
            guard let inbox = state.inboxes[node] else { return [] }
            guard inbox.reader == nil else { return nil }
            state.inboxes[node] = nil
            return inbox.pending
        }
        guard let left else { return InboxTakeover(moved: 0, removed: false) }
        var start = 0
        while start < left.count {
            let end = min(start + Self.batchLimit, left.count)
            await deliver(Array(left[start..<end]))
            start = end
        }
        return InboxTakeover(moved: left.count, removed: true)
    }

    /// The next batch for reader `id`, or nil when the inbox is empty or another reader took over.
    private func take(from node: NodeID, reader id: Int) -> [RelayMessage]? {
        self.state.withLock { state in
            guard state.inboxes[node]?.reader?.id == id, let pending = state.inboxes[node]?.pending, !pending.isEmpty else { return nil }
            let batch = Array(pending.prefix(Self.batchLimit))
            state.inboxes[node]?.pending.removeFirst(batch.count)
            return batch
        }
    }
}
