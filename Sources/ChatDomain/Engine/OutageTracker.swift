/// Turns a stream of successes and failures of one dependency into outage transitions, so an outage is logged
/// once when it starts and once when it ends, not once per call.
struct OutageTracker {
    enum Transition: Equatable {
        case none
        case wentDown
        case cameBack
    }

    private(set) var isDown = false

    mutating func failed() -> Transition {
        if self.isDown { return .none }
        self.isDown = true
        return .wentDown
    }

    mutating func succeeded() -> Transition {
        guard self.isDown else { return .none }
        self.isDown = false
        return .cameBack
    }
}
