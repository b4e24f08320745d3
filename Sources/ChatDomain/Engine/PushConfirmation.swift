import Synchronization

/// The confirmation of one live push to every connection of its recipient: settled once, as confirmed when the
/// first connection acknowledges, or as not confirmed when every connection's acknowledgement failed (closed,
/// timed out). The acknowledgements report to it as they complete; nothing waits.
final class PushConfirmation: Sendable {
    /// Acknowledgements still pending; nil once settled.
    private let pending: Mutex<Int?>
    private let settle: @Sendable (_ confirmed: Bool) -> Void

    /// A confirmation over `connections` acknowledgements that calls `settle` once.
    init(connections: Int, settle: @escaping @Sendable (_ confirmed: Bool) -> Void) {
        self.pending = Mutex(connections)
        self.settle = settle
    }

    /// One acknowledgement completed.
    func record(_ acknowledged: Bool) {
        let outcome: Bool? = self.pending.withLock { pending in
            guard let left = pending else { return nil }
            if acknowledged || left <= 1 {
                pending = nil
                return acknowledged
            }
            pending = left - 1
            return nil
        }
        if let outcome { self.settle(outcome) }
    }
}
