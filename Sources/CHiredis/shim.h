#ifndef CHATD_CHIREDIS_SHIM_H
#define CHATD_CHIREDIS_SHIM_H

// hiredis 0.14 (Debian 12's libhiredis-dev). Its variadic redisCommand is not imported into Swift, so the
// adapter uses the argv forms; the helpers below cover what Swift cannot reach directly.
#include <hiredis/hiredis.h>
#include <sys/time.h>

/// The context's error text: `errstr` is a char array, which Swift sees as a tuple.
static inline const char *chatd_redis_errstr(const redisContext *context) {
    return context->errstr;
}

/// The i-th element of an array reply.
static inline redisReply *chatd_redis_element(const redisReply *reply, size_t index) {
    return reply->element[index];
}

/// A timeval of `milliseconds`.
static inline struct timeval chatd_redis_timeval(long milliseconds) {
    struct timeval value;
    value.tv_sec = milliseconds / 1000;
    value.tv_usec = (milliseconds % 1000) * 1000;
    return value;
}

#endif
