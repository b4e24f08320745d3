extension Duration {
    /// Whole milliseconds, at least 1: the unit C clients take for timeouts and TTLs.
    public var wholeMilliseconds: Int {
        max(1, Int(self.components.seconds * 1000 + self.components.attoseconds / 1_000_000_000_000_000))
    }

    /// Whole nanoseconds: what metrics timers and NIO's time amounts take.
    public var wholeNanoseconds: Int64 {
        self.components.seconds * 1_000_000_000 + self.components.attoseconds / 1_000_000_000
    }
}
