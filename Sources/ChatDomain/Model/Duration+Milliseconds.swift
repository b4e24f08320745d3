extension Duration {
    /// Whole milliseconds, at least 1: the unit C clients take for timeouts and TTLs.
    public var wholeMilliseconds: Int {
        max(1, Int(self.components.seconds * 1000 + self.components.attoseconds / 1_000_000_000_000_000))
    }
}
