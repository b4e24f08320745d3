import CHiredis

/// A Redis reply, copied out of hiredis' reply object so it can outlive it.
enum RedisReply: Equatable, Sendable {
    case status(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    case array([RedisReply])
    case null

    /// Copies `reply` (which the caller still frees).
    init(_ reply: UnsafePointer<redisReply>) {
        switch reply.pointee.type {
        case REDIS_REPLY_STATUS:
            self = .status(String(cString: reply.pointee.str))
        case REDIS_REPLY_ERROR:
            self = .error(String(cString: reply.pointee.str))
        case REDIS_REPLY_INTEGER:
            self = .integer(reply.pointee.integer)
        case REDIS_REPLY_STRING:
            let buffer = UnsafeRawBufferPointer(start: reply.pointee.str, count: reply.pointee.len)
            self = .bulk(Array(buffer))
        case REDIS_REPLY_ARRAY:
            self = .array((0..<reply.pointee.elements).map { RedisReply(chatd_redis_element(reply, $0)) })
        default:
            self = .null
        }
    }

    /// The reply as text, for bulk and status replies.
    var string: String? {
        switch self {
        case .bulk(let bytes): String(decoding: bytes, as: UTF8.self)
        case .status(let text): text
        default: nil
        }
    }
}
