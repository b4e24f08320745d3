import Synchronization

/// Values read from or written to the file, kept coherent with it because this process is the file's only writer
/// (it holds the lock): a write replaces its entry after it committed and bumps the generation, and a read fills an
/// entry only if no write happened since the read began, so a slow read never puts back what a write replaced.
/// At most `limit` entries are kept; past it the cache starts empty again.
final class WriteThroughCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct State {
        var entries: [Key: Value] = [:]
        var generation: UInt64 = 0
    }

    private let state = Mutex(State())
    private let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// The cached value, or nil when `key` is not cached.
    func value(_ key: Key) -> Value? {
        self.state.withLock { $0.entries[key] }
    }

    /// The current generation, taken before a read that may fill the cache.
    var generation: UInt64 {
        self.state.withLock { $0.generation }
    }

    /// Caches what a read that began at `generation` found, unless a write happened since.
    func fill(_ values: [Key: Value], readAt generation: UInt64) {
        self.state.withLock { state in
            guard state.generation == generation else { return }
            if state.entries.count + values.count > self.limit { state.entries.removeAll(keepingCapacity: true) }
            state.entries.merge(values) { $1 }
        }
    }

    /// After a committed write: changes `key`'s entry (nil when not cached) and bumps the generation.
    func update(_ key: Key, _ change: (inout Value?) -> Void) {
        self.state.withLock { state in
            state.generation &+= 1
            var entry = state.entries[key]
            change(&entry)
            state.entries[key] = entry
        }
    }
}
