import CMongoc
import ChatDomain
import Foundation
import Logging
import Synchronization

/// Owns a `mongoc_client_pool_t`. Its calls block, so they run on the store's own threads; the pool holds as many
/// clients as there are threads, so popping one never waits.
final class MongoClientPool: @unchecked Sendable {
    // Sendable: mongoc_client_pool_t is thread-safe by design (each thread pops its own client); `pool` is never
    // reassigned after init.
    private let pool: OpaquePointer
    private let uri: OpaquePointer
    let database: String

    private static let initialize: Void = {
        mongoc_init()
        mongoc_log_set_handler({ level, domain, message, _ in
            MongoClientPool.route(level: level, domain: domain, message: message)
        }, nil)
    }()

    /// The logger libmongoc's own log lines go to (the last store created sets it; the handler is process-wide).
    private static let driverLogger = Mutex<Logger?>(nil)

    private init(pool: OpaquePointer, uri: OpaquePointer, database: String) {
        self.pool = pool
        self.uri = uri
        self.database = database
    }

    deinit {
        mongoc_client_pool_destroy(self.pool)
        mongoc_uri_destroy(self.uri)
    }

    /// Parses the URI and creates the pool; connects lazily.
    static func make(configuration: MongoStoreConfiguration, logger: Logger) throws(MongoStoreError) -> MongoClientPool {
        _ = Self.initialize
        Self.driverLogger.withLock { $0 = logger }
        var error = bson_error_t()
        guard let uri = mongoc_uri_new_with_error(configuration.uri, &error) else {
            throw MongoStoreError(code: .badURI, message: "MONGODB_URI is not a valid connection string: \(Self.message(of: &error))")
        }
        let timeout = Int32(clamping: configuration.serverSelectionTimeout.wholeMilliseconds)
        _ = mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, timeout)
        _ = mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS, timeout)
        guard let pool = mongoc_client_pool_new(uri) else {
            mongoc_uri_destroy(uri)
            throw MongoStoreError(code: .badURI, message: "libmongoc refused the connection string")
        }
        _ = mongoc_client_pool_set_error_api(pool, 2)
        mongoc_client_pool_max_size(pool, UInt32(max(configuration.threads, 1)))
        let named = mongoc_uri_get_database(uri).map { String(cString: $0) }
        let database = configuration.database ?? (named?.isEmpty == false ? named! : "chatd")
        return MongoClientPool(pool: pool, uri: uri, database: database)
    }

    /// Runs one command (one round trip) and returns the server's reply. Blocks: call it on the store's threads.
    func command(_ command: BSONDocument) throws(MongoStoreError) -> BSONDocument {
        let bytes: [UInt8]
        do {
            bytes = try command.encoded()
        } catch {
            throw MongoStoreError(code: .badDocument, message: "could not encode the command: \(error)")
        }
        var error = bson_error_t()
        var replyData: UnsafeMutablePointer<UInt8>?
        var replyLength: UInt32 = 0
        let ok = bytes.withUnsafeBufferPointer { command in
            chatd_mongo_command_bson(self.pool, self.database, command.baseAddress, command.count, &error, &replyData, &replyLength)
        }
        guard let replyData else {
            throw MongoStoreError(code: .badDocument, message: "could not encode the command: \(Self.message(of: &error))")
        }
        defer { bson_free(replyData) }
        guard ok else {
            let domain = error.domain
            let text = Self.message(of: &error)
            // Network, stream and server-selection failures mean: not reachable now.
            if domain == MONGOC_ERROR_SERVER_SELECTION.rawValue || domain == MONGOC_ERROR_STREAM.rawValue
                || domain == MONGOC_ERROR_CLIENT.rawValue
            {
                throw MongoStoreError(code: .unavailable, message: "MongoDB is unreachable: \(text)")
            }
            throw MongoStoreError(code: .serverError, message: "MongoDB answered: \(text)", serverCode: Int(error.code))
        }
        do {
            return try BSONDocument.decode(UnsafeRawBufferPointer(start: replyData, count: Int(replyLength)))
        } catch {
            throw MongoStoreError(code: .badDocument, message: "could not read the server's reply: \(error)")
        }
    }

    private static func message(of error: inout bson_error_t) -> String {
        withUnsafePointer(to: &error) { String(cString: chatd_bson_error_message($0)) }
    }

    private static func route(level: mongoc_log_level_t, domain: UnsafePointer<CChar>?, message: UnsafePointer<CChar>?) {
        guard let logger = Self.driverLogger.withLock({ $0 }) else { return }
        let text = message.map { String(cString: $0) } ?? ""
        let metadata: Logger.Metadata = ["mongoc.domain": "\(domain.map { String(cString: $0) } ?? "")", "mongoc.message": "\(text)"]
        switch level {
        case MONGOC_LOG_LEVEL_ERROR, MONGOC_LOG_LEVEL_CRITICAL:
            logger.error("libmongoc", metadata: metadata)
        case MONGOC_LOG_LEVEL_WARNING:
            logger.warning("libmongoc", metadata: metadata)
        case MONGOC_LOG_LEVEL_MESSAGE, MONGOC_LOG_LEVEL_INFO:
            logger.info("libmongoc", metadata: metadata)
        default:
            logger.trace("libmongoc", metadata: metadata)
        }
    }
}
