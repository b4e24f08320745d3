import CSQLite
import ChatAdapterSupport
public import ChatDomain
import Foundation
public import Logging
public import ServiceLifecycle
import Synchronization

/// The ``ChatDomain/MessageStore`` and ``ChatDomain/MessageQueue`` of a single node in one SQLite file, in WAL
/// mode: chatd's durable default, with no service to run.
///
/// Every write is a transaction that has committed before the call returns (so `message:sent` is only answered
/// for a message on disk), and concurrent writes share commits: one writer thread takes every write waiting and
/// commits them together (each in a savepoint of its own, so one that fails fails alone). Reads run on a second
/// connection and thread, and never wait for a commit. SQLite blocks, so neither runs on Swift's cooperative pool.
///
/// The offline queue is a table in the same file: per-user order, a TTL (expired entries are dead-lettered as
/// `expired`, as the RabbitMQ expiry handler sees them), a bound per user that refuses (dead-lettered as
/// `rejected`), and entries a consumer holds that return to their place, flagged redelivered, when it nacks or
/// closes. Run it as a `Service` (or call ``close()``).
public final class SQLiteChatStore: MessageStore, MessageQueue, Service {
    /// The settings the store was opened with.
    public let configuration: SQLiteStoreConfiguration
    let logger: Logger
    let clock: any WallClock
    /// Held while the store is open: one process per file (the queue's in-flight state lives in this process).
    private let lock: FileLock
    private let writer: SQLiteConnection
    private let reader: SQLiteConnection
    private let writerThread = BlockingThreads(role: "message store")
    private let readerThread = BlockingThreads(role: "message store")
    private let writes = PumpQueue<WriteRequest>()
    private let reads = PumpQueue<ReadRequest>()
    /// Queue entries handed to a consumer and not yet settled, per user, and the open consumers per user.
    let consumers = Mutex(ConsumerState())
    let deadLetterStream: AsyncStream<DeadLetter>
    let deadLetterContinuation: AsyncStream<DeadLetter>.Continuation
    private let commits = Atomic<Int>(0)
    /// Every send reads its chat and its recipients' block lists: they are answered from memory after the first
    /// read (nil: no such chat).
    let chatCache = WriteThroughCache<ChatID, Chat?>(limit: 100_000)
    /// Whom each user blocked.
    let blockCache = WriteThroughCache<UserID, Set<UserID>>(limit: 100_000)

    struct ConsumerState {
        /// Entries handed to a consumer and not settled yet, per user: sequence → consumer.
        var handedOut: [UserID: [Int64: UInt64]] = [:]
        /// The open consumers and whose queue each reads.
        var open: [UInt64: UserID] = [:]
        var nextID: UInt64 = 0
    }

    /// Opens (creating if needed) the database at `configuration.path` and brings it to this version's schema.
    /// - Throws: ``SQLiteStoreError``: the file cannot be created or written, is not a chatd database, or was
    ///   written by a newer chatd; the message names the file and what to do.
    public init(configuration: SQLiteStoreConfiguration, clock: any WallClock = SystemWallClock(), logger: Logger) throws(SQLiteStoreError) {
        self.configuration = configuration
        self.logger = logger
        self.clock = clock
        self.lock = try FileLock(path: configuration.path + ".lock")
        self.writer = try SQLiteConnection(path: configuration.path, create: true)
        try Schema.prepare(self.writer)
        try self.writer.execute("PRAGMA synchronous = \(configuration.synchronous.rawValue)")
        self.reader = try SQLiteConnection(path: configuration.path, create: false)
        (self.deadLetterStream, self.deadLetterContinuation) = AsyncStream.makeStream()
    }

    /// How many transactions were committed (each holds one or more writes).
    public var commitCount: Int { self.commits.load(ordering: .relaxed) }

    // MARK: Lifecycle

    /// Expires queue entries, trims delivery events and checkpoints the log until graceful shutdown (or
    /// cancellation), then closes.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.expireAndTrim()
                // Copies the log into the database off the writer's thread, so a commit rarely has to (SQLite's own
                // checkpoint after 1,000 pages stays as the fallback when this does not run).
                _ = try? await self.read { db in try db.run("PRAGMA wal_checkpoint(PASSIVE)") }
                try? await Task.sleep(for: self.configuration.expiryInterval)
            }
        }
        await self.close()
    }

    /// Finishes the writes already given, closes both connections and stops the threads; later calls fail with
    /// `unavailable`.
    public func close() async {
        await self.writerThread.runIfRunning { [writer] in writer.close() }
        await self.readerThread.runIfRunning { [reader] in reader.close() }
        await self.writerThread.shutDown()
        await self.readerThread.shutDown()
        for request in self.writes.takeAll() { request.finish(SQLiteStoreError(code: .closed, message: "the SQLite store is closed")) }
        for request in self.reads.takeAll() { request.cancel() }
        self.deadLetterContinuation.finish()
        self.lock.release()
    }

    // MARK: Reads and writes

    /// Runs `body` on the reader connection's thread. Reads that arrive while the thread is busy wait in a queue
    /// and run in its next visit, one wake-up for all of them (every send reads its chat and its blockers).
    func read<Result: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> Result) async throws(ChatError) -> Result {
        let outcome: Swift.Result<Result, SQLiteStoreError> = await withCheckedContinuation { continuation in
            let request = ReadRequest(
                run: { connection in
                    do {
                        continuation.resume(returning: .success(try body(connection)))
                    } catch {
                        continuation.resume(returning: .failure(Self.storeError(error)))
                    }
                },
                cancel: { continuation.resume(returning: .failure(SQLiteStoreError(code: .closed, message: "the SQLite store is closed"))) }
            )
            if self.reads.add(request) {
                self.readerThread.submit({ self.pumpReads() }) {
                    for request in self.reads.takeAll() { request.cancel() }
                }
            }
        }
        switch outcome {
        case .success(let value): return value
        case .failure(let error): throw error.chatError
        }
    }

    /// On the reader's thread: runs the waiting reads until none wait.
    private func pumpReads() {
        while let batch = self.reads.takeBatch(maxCount: 256) {
            for request in batch { request.run(self.reader) }
        }
    }

    /// Runs `body` in the next transaction of the writer and returns once that transaction committed; `body`'s
    /// changes are rolled back alone if it throws.
    @discardableResult
    func write<Result: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> Result) async throws(ChatError) -> Result {
        let outcome: Swift.Result<Result, SQLiteStoreError> = await withCheckedContinuation { continuation in
            let box = ResultBox<Result>()
            let request = WriteRequest(
                apply: { connection in box.value = try body(connection) },
                finish: { error in
                    if let error {
                        continuation.resume(returning: .failure(error))
                    } else if let value = box.value {
                        continuation.resume(returning: .success(value))
                    } else {
                        continuation.resume(returning: .failure(SQLiteStoreError(code: .statementFailed, message: "a write produced no result")))
                    }
                }
            )
            if self.writes.add(request) {
                self.writerThread.submit({ self.pumpWrites() }) {
                    for request in self.writes.takeAll() { request.finish(SQLiteStoreError(code: .closed, message: "the SQLite store is closed")) }
                }
            }
        }
        switch outcome {
        case .success(let value): return value
        case .failure(let error): throw error.chatError
        }
    }

    /// On the writer's thread: commits the waiting writes, as many per transaction as the configuration allows,
    /// until none wait; each caller is answered only after its transaction committed.
    private func pumpWrites() {
        while let batch = self.writes.takeBatch(maxCount: self.configuration.maxWritesPerCommit) {
            do {
                try self.writer.run("BEGIN IMMEDIATE")
            } catch {
                for request in batch { request.finish(Self.storeError(error)) }
                continue
            }
            var failures: [SQLiteStoreError?] = []
            failures.reserveCapacity(batch.count)
            for request in batch {
                do {
                    try self.writer.run("SAVEPOINT write")
                    try request.apply(self.writer)
                    try self.writer.run("RELEASE write")
                    failures.append(nil)
                } catch {
                    _ = try? self.writer.run("ROLLBACK TO write")
                    _ = try? self.writer.run("RELEASE write")
                    failures.append(Self.storeError(error))
                }
            }
            do {
                try self.writer.run("COMMIT")
                self.commits.add(1, ordering: .relaxed)
                for (request, failure) in zip(batch, failures) { request.finish(failure) }
            } catch {
                // Nothing of this transaction is on disk (a full disk, an I/O error): every caller hears so.
                _ = try? self.writer.run("ROLLBACK")
                self.logger.warning("SQLite commit failed; these writes were not stored", metadata: ["sqlite.path": "\(self.configuration.path)", "error": "\(error)"])
                for request in batch { request.finish(Self.storeError(error)) }
            }
        }
    }

    static func storeError(_ error: any Error) -> SQLiteStoreError {
        if let error = error as? SQLiteStoreError { return error }
        return SQLiteStoreError(code: .statementFailed, message: "a stored row cannot be read: \(error)")
    }
}

/// An exclusive `flock` on a file next to the database, released on close or when the process ends (a `kill -9`
/// included).
final class FileLock: Sendable {
    private let descriptor: Mutex<Int32>

    init(path: String) throws(SQLiteStoreError) {
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw SQLiteStoreError(
                code: .cannotOpen,
                message: "cannot create \(path): \(String(cString: strerror(errno))); check that its directory exists and is writable by chatd"
            )
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            Foundation.close(descriptor)
            throw SQLiteStoreError(
                code: .inUse,
                message: "another chatd process uses this database (it holds \(path)): stop it, or give this one another DATA_DIR"
            )
        }
        self.descriptor = Mutex(descriptor)
    }

    func release() {
        self.descriptor.withLock { descriptor in
            guard descriptor >= 0 else { return }
            Foundation.close(descriptor)
            descriptor = -1
        }
    }

    deinit {
        self.release()
    }
}

/// A read waiting for the reader.
struct ReadRequest: Sendable {
    /// Runs the read on the reader's connection and answers the caller.
    var run: @Sendable (SQLiteConnection) -> Void
    /// Answers the caller that the store closed first.
    var cancel: @Sendable () -> Void
}

/// A write waiting for the writer.
struct WriteRequest: Sendable {
    /// Runs the write on the writer's connection, inside the batch's transaction.
    var apply: @Sendable (SQLiteConnection) throws -> Void
    /// Answers the caller: nil once committed, or the error.
    var finish: @Sendable (SQLiteStoreError?) -> Void
}

/// A write's result, set on the writer's thread before `finish` reads it there.
private final class ResultBox<Value>: @unchecked Sendable {
    var value: Value?
}
