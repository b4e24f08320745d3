/// Puts accepted messages in one order: the order their ids were generated in.
///
/// Stores answer concurrent inserts in any order; routing waits for its turn, so every recipient sees messages
/// in id order and catching up from the store (sorted by id) agrees with live delivery. Pure: it returns the
/// waiter to resume instead of resuming it.
struct SendSequencer<Waiter> {
    typealias Ticket = UInt64

    private var nextTicket: Ticket = 0
    private var turn: Ticket = 0
    private var finished: Set<Ticket> = []
    private var waiters: [Ticket: Waiter] = [:]

    /// Takes the next place in line.
    mutating func issue() -> Ticket {
        defer { self.nextTicket += 1 }
        return self.nextTicket
    }

    /// Whether `ticket` may route now.
    func isTurn(_ ticket: Ticket) -> Bool {
        ticket == self.turn
    }

    /// Parks `waiter` until `ticket`'s turn; returns it back if the turn is already there.
    mutating func wait(_ ticket: Ticket, _ waiter: Waiter) -> Waiter? {
        if ticket == self.turn { return waiter }
        self.waiters[ticket] = waiter
        return nil
    }

    /// `ticket` routed, or gave up (a failed or duplicate insert); returns the waiter whose turn it is now.
    mutating func finish(_ ticket: Ticket) -> Waiter? {
        self.finished.insert(ticket)
        while self.finished.remove(self.turn) != nil {
            self.turn += 1
        }
        return self.waiters.removeValue(forKey: self.turn)
    }

    /// Tickets issued and not finished.
    var outstanding: Int { Int(self.nextTicket - self.turn) - self.finished.count }
}
