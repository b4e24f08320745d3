import DequeModule
import Foundation

/// The delivery state of one recipient on this node; pure, so every ordering rule is tested without awaits.
///
/// A recipient is `live` only when nothing of theirs can still be waiting elsewhere: their queue was drained (or
/// was found empty) after they connected, and no message was routed to the offline path since. Until then new
/// messages go to the offline path behind what is already there, so nothing overtakes and nothing is stranded.
struct RecipientLane {
    enum Mode: Equatable {
        /// No connection on this node.
        case offline
        /// Connected, but the queue may hold messages; waiting for `user:reconnected`.
        case awaitingDrain
        /// A drain is running.
        case draining
        /// Connected and caught up: new messages are pushed at once.
        case live
    }

    /// A live delivery waiting for the client's confirmation.
    struct LivePush {
        enum State { case pending, confirmed, unconfirmed }
        var entry: QueueEntry
        var state: State
    }

    /// What to do with a message for this recipient.
    enum Route: Equatable {
        /// Emit it to these connections.
        case push([ConnectionID])
        /// Put it on the offline path; when `startFlusher` is set the caller must run the enqueue flusher.
        case enqueue(startFlusher: Bool)
    }

    /// What the confirmation of a live push settled.
    struct PushResolution: Equatable {
        /// Messages the client confirmed, in order: record them delivered.
        var delivered: [Message] = []
        /// Messages the client did not confirm, in order: they are on the offline path again.
        var requeued: [Message] = []
        /// Whether the caller must run the enqueue flusher for the requeued messages.
        var startFlusher = false
    }

    private(set) var mode: Mode = .offline
    private(set) var connections: [ConnectionID] = []
    /// How many messages were routed to the offline path so far; a drain pass that starts and ends with the same
    /// count saw everything.
    private(set) var offlineRoutings: UInt64 = 0
    private(set) var enqueueBuffer: [QueueEntry] = []
    private(set) var enqueueInFlight = false
    private(set) var livePushes: Deque<LivePush> = []
    /// The other nodes that held a connection of the recipient when a message last took the offline path here
    /// (the send's presence lookup): the enqueue flusher forwards there instead of queueing.
    private(set) var remoteNodes: Set<NodeID> = []

    /// Whether the lane holds nothing worth keeping.
    var isIdle: Bool {
        self.mode == .offline && self.connections.isEmpty && self.livePushes.isEmpty && self.enqueueBuffer.isEmpty
            && !self.enqueueInFlight
    }

    /// Decides the path of `entry`'s message.
    mutating func route(_ entry: QueueEntry) -> Route {
        if self.mode == .live, !self.connections.isEmpty {
            self.livePushes.append(LivePush(entry: entry, state: .pending))
            return .push(self.connections)
        }
        return .enqueue(startFlusher: self.appendToOfflinePath(entry))
    }

    /// The next batch for the running flusher, or nil when it may stop (the flusher is then no longer running).
    mutating func takeEnqueueBatch() -> [QueueEntry]? {
        guard !self.enqueueBuffer.isEmpty else {
            self.enqueueInFlight = false
            return nil
        }
        defer { self.enqueueBuffer = [] }
        return self.enqueueBuffer
    }

    /// Records where else the recipient is connected, as the latest presence lookup said (empty: nowhere).
    mutating func sawRemoteNodes(_ nodes: Set<NodeID>) {
        self.remoteNodes = nodes
    }

    /// A connection opened; returns whether it is the recipient's first on this node.
    mutating func opened(_ connection: ConnectionID) -> Bool {
        guard !self.connections.contains(connection) else { return false }
        self.connections.append(connection)
        // Connected here now: what arrives from here on takes this node's own path.
        self.remoteNodes = []
        if self.mode == .offline {
            self.mode = .awaitingDrain
            return true
        }
        return false
    }

    /// A connection closed; returns whether it was the recipient's last on this node.
    mutating func closed(_ connection: ConnectionID) -> Bool {
        guard let index = self.connections.firstIndex(of: connection) else { return false }
        self.connections.remove(at: index)
        guard self.connections.isEmpty else { return false }
        // A running drain notices on its own (its emits fail) and finishes as failed.
        if self.mode != .draining { self.mode = .offline }
        return true
    }

    /// On connect the engine looked at the backlog; with none, and nothing routed since `snapshot`, go live.
    mutating func backlogChecked(isEmpty: Bool, snapshot: UInt64) -> Bool {
        guard self.mode == .awaitingDrain, isEmpty, self.isQuiet(since: snapshot) else { return false }
        self.mode = .live
        return true
    }

    /// Starts a drain; false when a drain already runs or nobody is connected. Each pass then starts from
    /// ``passSnapshot``.
    mutating func beginDrain() -> Bool {
        guard self.mode != .draining, !self.connections.isEmpty else { return false }
        // A live recipient may have unconfirmed pushes; they settle on their own. Further messages queue up
        // behind the drain.
        self.mode = .draining
        return true
    }

    /// A drain pass emptied the queue and the store; returns whether the recipient is now live, or whether
    /// another pass is needed (messages were routed to the offline path meanwhile).
    mutating func finishDrainPass(snapshot: UInt64) -> Bool {
        guard self.mode == .draining else { return false }
        guard !self.connections.isEmpty else {
            self.mode = .offline
            return false
        }
        guard self.isQuiet(since: snapshot) else { return false }
        self.mode = .live
        return true
    }

    /// A drain stopped on a failed delivery; what is left stays on the offline path for the next reconnect.
    mutating func drainFailed() {
        self.mode = self.connections.isEmpty ? .offline : .awaitingDrain
    }

    /// The snapshot that starts a drain pass, or nil while a queue write is buffered or in flight: a pass may only
    /// start once every message routed to the offline path so far has landed in the queue (or failed to), or its
    /// queue phase could miss one that the pass would then count as seen.
    var passSnapshot: UInt64? {
        self.enqueueBuffer.isEmpty && !self.enqueueInFlight ? self.offlineRoutings : nil
    }

    /// The current count of offline routings.
    var snapshot: UInt64 { self.offlineRoutings }

    /// Settles the live push of `messageID`. Confirmations are applied in push order; the first unconfirmed
    /// push takes the recipient out of live mode and puts it, and every later unconfirmed one, on the offline
    /// path in order, stamped as queued at `now`.
    mutating func resolvePush(_ messageID: MessageID, confirmed: Bool, now: Date) -> PushResolution {
        var resolution = PushResolution()
        guard let index = self.livePushes.firstIndex(where: { $0.entry.message.id == messageID }) else {
            return resolution
        }
        self.livePushes[index].state = confirmed ? .confirmed : .unconfirmed
        while let head = self.livePushes.first, head.state != .pending {
            if head.state == .confirmed {
                resolution.delivered.append(head.entry.message)
                self.livePushes.removeFirst()
                continue
            }
            // The client missed this one: stop trusting the connection until it drains again.
            if self.mode == .live {
                self.mode = self.connections.isEmpty ? .offline : .awaitingDrain
            }
            for push in self.livePushes {
                if push.state == .confirmed {
                    resolution.delivered.append(push.entry.message)
                } else {
                    var entry = push.entry
                    entry.enqueuedAt = now
                    resolution.requeued.append(entry.message)
                    if self.appendToOfflinePath(entry) { resolution.startFlusher = true }
                }
            }
            self.livePushes.removeAll()
        }
        return resolution
    }

    private func isQuiet(since snapshot: UInt64) -> Bool {
        self.offlineRoutings == snapshot && self.enqueueBuffer.isEmpty && !self.enqueueInFlight
    }

    private mutating func appendToOfflinePath(_ entry: QueueEntry) -> Bool {
        self.offlineRoutings += 1
        self.enqueueBuffer.append(entry)
        guard !self.enqueueInFlight else { return false }
        self.enqueueInFlight = true
        return true
    }
}
