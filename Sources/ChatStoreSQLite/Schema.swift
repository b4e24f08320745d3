import Foundation

/// The database's layout, versioned from the first version on: `PRAGMA user_version` holds the version a file is
/// at, `PRAGMA application_id` marks it as chatd's. Opening a file applies the migrations it lacks, each in a
/// transaction of its own; a file from a newer chatd is refused.
enum Schema {
    /// "chtd": the `application_id` that marks a file as a chatd database.
    static let applicationID: Int64 = 0x6368_7464

    /// Migration `n` (1-based) takes a file from version `n - 1` to version `n`.
    static let migrations: [String] = [
        """
        CREATE TABLE users (id TEXT PRIMARY KEY, json BLOB NOT NULL) WITHOUT ROWID;
        CREATE TABLE chats (id TEXT PRIMARY KEY, json BLOB NOT NULL, last_message TEXT) WITHOUT ROWID;
        CREATE TABLE chat_members (user_id TEXT NOT NULL, chat_id TEXT NOT NULL, PRIMARY KEY (user_id, chat_id)) WITHOUT ROWID;
        CREATE INDEX chat_members_chat ON chat_members (chat_id);
        CREATE TABLE messages (
            id TEXT PRIMARY KEY, chat_id TEXT NOT NULL, sender TEXT NOT NULL, client_id TEXT, created_ms INTEGER NOT NULL,
            content TEXT NOT NULL, type TEXT NOT NULL, attachments BLOB, reply_to TEXT
        ) WITHOUT ROWID;
        CREATE INDEX messages_chat ON messages (chat_id, id);
        CREATE UNIQUE INDEX messages_client ON messages (chat_id, sender, client_id) WHERE client_id IS NOT NULL;
        CREATE TABLE pending (user_id TEXT NOT NULL, message_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
            PRIMARY KEY (user_id, message_id)) WITHOUT ROWID;
        CREATE TABLE reads (message_id TEXT NOT NULL, user_id TEXT NOT NULL, at_ms INTEGER NOT NULL,
            PRIMARY KEY (message_id, user_id)) WITHOUT ROWID;
        CREATE TABLE outcomes (message_id TEXT NOT NULL, user_id TEXT NOT NULL, status TEXT NOT NULL, at_ms INTEGER NOT NULL,
            PRIMARY KEY (message_id, user_id)) WITHOUT ROWID;
        CREATE TABLE blocks (user_id TEXT NOT NULL, blocked TEXT NOT NULL, PRIMARY KEY (user_id, blocked)) WITHOUT ROWID;
        CREATE INDEX blocks_blocked ON blocks (blocked, user_id);
        CREATE TABLE queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, message_id TEXT NOT NULL,
            enqueued_ms INTEGER NOT NULL, redelivered INTEGER NOT NULL DEFAULT 0, json BLOB NOT NULL);
        CREATE INDEX queue_user ON queue (user_id, seq);
        CREATE INDEX queue_enqueued ON queue (enqueued_ms);
        CREATE TABLE delivery_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, message_id TEXT NOT NULL,
            user_id TEXT NOT NULL, status TEXT NOT NULL);
        """,
        // v2: read marks (per chat and reader, and per message the time a mark first covered it) and the receipts
        // webhook's outbox.
        """
        CREATE TABLE read_marks (chat_id TEXT NOT NULL, user_id TEXT NOT NULL, message_id TEXT NOT NULL, at_ms INTEGER NOT NULL,
            PRIMARY KEY (chat_id, user_id)) WITHOUT ROWID;
        CREATE TABLE message_reads (message_id TEXT NOT NULL, user_id TEXT NOT NULL, at_ms INTEGER NOT NULL,
            PRIMARY KEY (message_id, user_id)) WITHOUT ROWID;
        CREATE TABLE receipt_outbox (id TEXT PRIMARY KEY, json BLOB NOT NULL) WITHOUT ROWID;
        """,
    ]

    /// The version this chatd writes.
    static var currentVersion: Int64 { Int64(self.migrations.count) }

    /// Checks that `connection`'s file is chatd's (or new) and brings it to ``currentVersion``.
    static func prepare(_ connection: SQLiteConnection) throws(SQLiteStoreError) {
        let path = connection.path
        let application: Int64
        let version: Int64
        let tables: Int64
        do {
            application = try connection.integer("PRAGMA application_id") ?? 0
            version = try connection.integer("PRAGMA user_version") ?? 0
            tables = try connection.integer("SELECT count(*) FROM sqlite_master") ?? 0
        } catch let error as SQLiteStoreError {
            throw error
        } catch {
            throw SQLiteStoreError(code: .notChatdDatabase, message: "\(path) cannot be read: \(error)")
        }
        if application != Self.applicationID, application != 0 || tables > 0 {
            throw SQLiteStoreError(
                code: .notChatdDatabase,
                message: "\(path) is another program's SQLite database (application_id \(application)), not chatd's: choose another DATA_DIR, or move the file away"
            )
        }
        if version > Self.currentVersion {
            throw SQLiteStoreError(
                code: .newerSchema,
                message: "\(path) was written by a newer chatd (schema version \(version); this chatd knows up to \(Self.currentVersion)): run that chatd version or a later one, or restore a backup"
            )
        }
        // WAL: a commit is one append to the log (readers never wait for it); the first open of a new file sets it.
        try connection.execute("PRAGMA journal_mode = WAL")
        for next in stride(from: version + 1, through: Self.currentVersion, by: 1) {
            try connection.execute("BEGIN IMMEDIATE")
            do {
                // Under the write lock: another opener may have migrated meanwhile.
                if (try connection.integer("PRAGMA user_version") ?? 0) >= next {
                    try connection.execute("COMMIT")
                    continue
                }
                try connection.execute(Self.migrations[Int(next) - 1])
                try connection.execute("PRAGMA application_id = \(Self.applicationID); PRAGMA user_version = \(next)")
                try connection.execute("COMMIT")
            } catch {
                try? connection.execute("ROLLBACK")
                let error = SQLiteChatStore.storeError(error)
                throw SQLiteStoreError(code: error.code, message: "migrating \(path) to schema version \(next) failed: \(error.message)", resultCode: error.resultCode)
            }
        }
    }
}
