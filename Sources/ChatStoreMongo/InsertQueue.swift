import ChatDomain
import Synchronization

/// Inserts waiting for one of the store's threads. Concurrent sends share one visit to the thread, one `insert`
/// command and one `update` of their chats' `lastMessage`, instead of a hop and two round trips each.
///
/// Callers add entries from any task; a pump (``MongoMessageStore``'s, on one of the store's threads) takes
/// them in batches. At most one pump is scheduled at a time: ``add(_:)`` says when a new one is needed.
final class InsertQueue: Sendable {
    /// How the server took one document of a batch.
    enum Write: Sendable {
        case inserted
        /// Refused as a duplicate key (11000): the error as the server wrote it, for the caller to look into.
        case duplicateKey(BSONDocument)
    }

    /// One message to insert, and who to tell.
    struct Entry: Sendable {
        /// The message's document, as BSON bytes.
        var document: [UInt8]
        var chatID: ChatID
        var messageID: MessageID
        /// Called once, on a store thread.
        var complete: @Sendable (Result<Write, ChatError>) -> Void
    }

    /// At most this many documents per `insert` command.
    static let maxCount = 500
    /// At most this many bytes of documents per command (MongoDB takes commands up to 16 MiB).
    static let maxBytes = 8 << 20

    private struct State {
        var entries: [Entry] = []
        var scheduled = false
    }

    private let state = Mutex(State())

    /// Queues `entry`; true when no pump is scheduled, so the caller must schedule one.
    func add(_ entry: Entry) -> Bool {
        self.state.withLock { state in
            state.entries.append(entry)
            defer { state.scheduled = true }
            return !state.scheduled
        }
    }

    /// The oldest entries, up to ``maxCount`` and ``maxBytes`` (at least one); nil when none wait, which ends the
    /// pump's turn (the next ``add(_:)`` schedules another).
    func takeBatch() -> [Entry]? {
        self.state.withLock { state in
            guard !state.entries.isEmpty else {
                state.scheduled = false
                return nil
            }
            var count = 0
            var bytes = 0
            for entry in state.entries {
                guard count < Self.maxCount, count == 0 || bytes + entry.document.count <= Self.maxBytes else { break }
                count += 1
                bytes += entry.document.count
            }
            let batch = Array(state.entries.prefix(count))
            state.entries.removeFirst(count)
            return batch
        }
    }

    /// Fails every waiting entry (the store's threads are gone) and schedules no more pumps.
    func failAll(_ error: ChatError) {
        let entries = self.state.withLock { state in
            defer {
                state.entries.removeAll()
                state.scheduled = false
            }
            return state.entries
        }
        for entry in entries { entry.complete(.failure(error)) }
    }
}
