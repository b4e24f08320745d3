/// One message emitted to every connection of a recipient; delivered once any connection confirms it.
struct DeliveryAttempt: Sendable {
    var confirmation: DeliveryConfirmation
    /// Connections the event was written to.
    var written: Int
    /// One per written connection, when clients must acknowledge.
    var acknowledgements: [Acknowledgement]

    /// Whether the recipient is known to have the message right now, without waiting: nil while undecided.
    var isConfirmedNow: Bool? {
        switch self.confirmation {
        case .socketWrite:
            return self.written > 0
        case .clientAcknowledgement:
            let outcomes = self.acknowledgements.map(\.succeeded)
            if outcomes.contains(true) { return true }
            return outcomes.contains(nil) ? nil : false
        }
    }

    /// Whether the recipient got the message: a client acknowledged in time, or (for clients that cannot
    /// acknowledge) the event was written to at least one connection.
    func isConfirmed() async -> Bool {
        switch self.confirmation {
        case .socketWrite:
            return self.written > 0
        case .clientAcknowledgement:
            // The engine's AcknowledgementDeadlines fails an acknowledgement that is not given in time.
            if self.acknowledgements.count == 1 {
                return (try? await self.acknowledgements[0].waitFailingOnCancellation()) != nil
            }
            return await withTaskGroup(of: Bool.self) { group in
                for acknowledgement in self.acknowledgements {
                    group.addTask { (try? await acknowledgement.waitFailingOnCancellation()) != nil }
                }
                for await confirmed in group where confirmed {
                    group.cancelAll()
                    return true
                }
                return false
            }
        }
    }
}
