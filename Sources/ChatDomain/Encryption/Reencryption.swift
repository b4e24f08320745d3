/// Re-seals stored messages under the current key (`chatd reencrypt`): messages sealed under an older key, and
/// messages stored in the clear in chats that are sealed now. Resumable: a message already under the current key is
/// only read, so running it again (or after an interruption) picks up where the work is.
public struct Reencryption: Sendable {
    /// What a run did.
    public struct Report: Sendable, Hashable {
        /// Messages read.
        public var examined = 0
        /// Messages re-sealed (or sealed for the first time).
        public var resealed = 0
        /// Messages that could not be opened (their key is not configured, or they were changed); left as they are.
        public var unreadable = 0

        /// A report of these counts.
        public init(examined: Int = 0, resealed: Int = 0, unreadable: Int = 0) {
            self.examined = examined
            self.resealed = resealed
            self.unreadable = unreadable
        }
    }

    let store: SealingMessageStore
    let rewriting: any MessageContentRewriting

    /// Re-seals the messages of `rewriting`, which must be `store`'s base.
    public init(store: SealingMessageStore, rewriting: any MessageContentRewriting) {
        self.store = store
        self.rewriting = rewriting
    }

    /// Goes through every stored message once, `batch` at a time, calling `progress` after each batch.
    public func run(batch: Int, progress: (Report) -> Void = { _ in }) async throws -> Report {
        var report = Report()
        var after: MessageID?
        let current = self.store.sealing.sealer.currentKeyID
        while true {
            let page = try await self.rewriting.storedMessages(after: after, limit: max(1, batch))
            for stored in page {
                report.examined += 1
                let keyID = MessageSealing.keyID(of: stored)
                if keyID == current { continue }
                if keyID == nil, !(try await self.store.seals(stored.chatID)) { continue }
                guard case .success(let opened) = self.store.open(stored) else {
                    report.unreadable += 1
                    continue
                }
                try await self.rewriting.replaceContent(of: try self.store.sealing.seal(opened))
                report.resealed += 1
            }
            progress(report)
            guard page.count == max(1, batch), let last = page.last else { break }
            after = last.id
        }
        return report
    }
}
