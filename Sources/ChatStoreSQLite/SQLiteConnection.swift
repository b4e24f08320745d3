import CSQLite
import Foundation

/// A value bound to a statement parameter.
enum SQLValue {
    case integer(Int64)
    case text(String)
    case blob(Data)
    case null
}

/// One row of a query's result, valid during the row callback only.
struct SQLRow {
    fileprivate let statement: OpaquePointer

    func integer(_ column: Int32) -> Int64 { sqlite3_column_int64(self.statement, column) }

    func text(_ column: Int32) -> String? {
        guard let bytes = sqlite3_column_text(self.statement, column) else { return nil }
        return String(cString: bytes)
    }

    func blob(_ column: Int32) -> Data {
        let count = Int(sqlite3_column_bytes(self.statement, column))
        guard count > 0, let bytes = sqlite3_column_blob(self.statement, column) else { return Data() }
        return Data(bytes: bytes, count: count)
    }

    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(self.statement, column) == SQLITE_NULL }
}

/// One SQLite connection and its prepared statements.
///
/// Confinement: every method runs on the single thread its ``SQLiteChatStore`` gave this connection, never on
/// Swift's cooperative pool, so the handle (opened without SQLite's own mutex) is only ever touched by that
/// thread. That invariant is why the class may be `@unchecked Sendable`: it only crosses into that thread.
final class SQLiteConnection: @unchecked Sendable {
    let path: String
    private var handle: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]

    /// Opens (and with `create`, creates) the database at `path`.
    init(path: String, create: Bool) throws(SQLiteStoreError) {
        self.path = path
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX
        let status = sqlite3_open_v2(path, &handle, flags, nil)
        guard status == SQLITE_OK, let handle else {
            let reason = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(handle)
            throw SQLiteStoreError(
                code: .cannotOpen,
                message: "cannot open the database \(path): \(reason); check that its directory exists and is writable by chatd",
                resultCode: status
            )
        }
        self.handle = handle
        sqlite3_extended_result_codes(handle, 1)
        // A writer holding the lock for a commit is waited for, up to this long (readers never block in WAL).
        sqlite3_busy_timeout(handle, 5000)
    }

    deinit {
        self.close()
    }

    func close() {
        for statement in self.statements.values { sqlite3_finalize(statement) }
        self.statements = [:]
        if let handle { sqlite3_close_v2(handle) }
        self.handle = nil
    }

    /// Runs `sql` (one or more statements without parameters).
    func execute(_ sql: String) throws(SQLiteStoreError) {
        let handle = try self.open()
        var message: UnsafeMutablePointer<CChar>?
        let status = sqlite3_exec(handle, sql, nil, nil, &message)
        defer { sqlite3_free(message) }
        guard status == SQLITE_OK else {
            throw self.error(status, message.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(handle)), sql: sql)
        }
    }

    /// Runs `sql` with `arguments`, calling `row` for each result row; returns the number of rows it changed.
    @discardableResult
    func run(_ sql: String, _ arguments: [SQLValue] = [], row: (SQLRow) throws -> Void = { _ in }) throws -> Int {
        let handle = try self.open()
        let statement = try self.statement(sql, handle: handle)
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        for (index, argument) in arguments.enumerated() {
            let position = Int32(index + 1)
            let status: Int32
            switch argument {
            case .integer(let value): status = sqlite3_bind_int64(statement, position, value)
            case .text(let value): status = chatd_sqlite_bind_text(statement, position, value, -1)
            case .blob(let value):
                status = value.withUnsafeBytes { chatd_sqlite_bind_blob(statement, position, $0.baseAddress, Int32($0.count)) }
            case .null: status = sqlite3_bind_null(statement, position)
            }
            guard status == SQLITE_OK else { throw self.error(status, String(cString: sqlite3_errmsg(handle)), sql: sql) }
        }
        while true {
            let status = sqlite3_step(statement)
            if status == SQLITE_ROW {
                try row(SQLRow(statement: statement))
                continue
            }
            guard status == SQLITE_DONE else { throw self.error(status, String(cString: sqlite3_errmsg(handle)), sql: sql) }
            return Int(sqlite3_changes(handle))
        }
    }

    /// The first column of the first row as an integer, or nil when there is no row.
    func integer(_ sql: String, _ arguments: [SQLValue] = []) throws -> Int64? {
        var value: Int64?
        try self.run(sql, arguments) { row in if value == nil { value = row.integer(0) } }
        return value
    }

    private func open() throws(SQLiteStoreError) -> OpaquePointer {
        guard let handle = self.handle else { throw SQLiteStoreError(code: .closed, message: "the SQLite store is closed") }
        return handle
    }

    private func statement(_ sql: String, handle: OpaquePointer) throws(SQLiteStoreError) -> OpaquePointer {
        if let cached = self.statements[sql] { return cached }
        var statement: OpaquePointer?
        let status = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard status == SQLITE_OK, let statement else { throw self.error(status, String(cString: sqlite3_errmsg(handle)), sql: sql) }
        self.statements[sql] = statement
        return statement
    }

    /// Maps a result code to an error that says what to do.
    private func error(_ status: Int32, _ reason: String, sql: String) -> SQLiteStoreError {
        switch status & 0xFF {
        case SQLITE_FULL:
            return SQLiteStoreError(code: .unavailable, message: "the disk holding \(self.path) is full (\(reason)); free some space", resultCode: status)
        case SQLITE_IOERR, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_INTERRUPT:
            return SQLiteStoreError(code: .unavailable, message: "SQLite could not complete the call on \(self.path): \(reason)", resultCode: status)
        case SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM, SQLITE_AUTH:
            return SQLiteStoreError(
                code: .cannotOpen,
                message: "cannot write \(self.path): \(reason); make it and its directory writable by chatd",
                resultCode: status
            )
        case SQLITE_CORRUPT, SQLITE_NOTADB:
            return SQLiteStoreError(
                code: .notChatdDatabase,
                message: "\(self.path) is not a readable SQLite database (\(reason)): move it away, or restore it from a backup",
                resultCode: status
            )
        default:
            let statement = sql.split(separator: "\n").first.map(String.init) ?? sql
            return SQLiteStoreError(code: .statementFailed, message: "SQLite refused `\(statement.prefix(80))`: \(reason)", resultCode: status)
        }
    }
}
