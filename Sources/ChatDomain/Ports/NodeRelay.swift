/// Carries live messages between chatd nodes that share one presence store: the sender's node forwards a message to
/// each node that holds a connection of a recipient, and that node delivers it as if it had been sent there.
///
/// Each node reads only its own inbox. The store stays the final net: a forwarded message stays pending for its
/// recipient until a client confirms it, so an inbox lost with a node delays it to the recipient's next catch-up,
/// never loses it.
///
/// Implementations throw ``ChatError`` with code ``ChatError/Code/unavailable`` when the relay cannot be reached.
public protocol NodeRelay: Sendable {
    /// Hands `entries` (all for one recipient, in acceptance order) to `node`'s inbox and returns once the inbox
    /// holds them; returns the indexes of entries no inbox took (no such node: it never ran, or its inbox was
    /// removed after it died), which the caller routes to the offline path instead.
    func forward(_ entries: [QueueEntry], to node: NodeID) async throws -> Set<Int>

    /// Reads `node`'s inbox until the task is cancelled, handing each batch to `deliver` in order; a batch is
    /// removed from the inbox once `deliver` returned, so one taken before a crash comes back to the next reader.
    func receive(for node: NodeID, deliver: @escaping @Sendable ([QueueEntry]) async -> Void) async throws
}
