#ifndef CHATD_CMONGOC_SHIM_H
#define CHATD_CMONGOC_SHIM_H

// libmongoc 1.23 (Debian 12's libmongoc-dev). bson_t is over-aligned (128 bytes), so Swift can neither allocate
// nor lay it out: it only ever sees bson_t pointers as opaque. The store therefore hands these helpers BSON bytes
// (which it writes and reads itself) and they own every bson_t on the C side.
#include <mongoc/mongoc.h>
#include <string.h>

/// The error's message: a char array, which Swift sees as a tuple.
static inline const char *chatd_bson_error_message(const bson_error_t *error) {
    return error->message;
}

/// Runs the command `command_data` (a BSON document of `command_length` bytes) on database `database` with a
/// client popped from `pool` and pushed back. Returns whether the command succeeded; on failure `error` says why
/// (its domain tells a network or server-selection failure from an error the server answered). `*reply_data`
/// receives a copy of the server's reply as BSON (free it with bson_free) and `*reply_length` its length; it is
/// NULL when the command was not a valid BSON document (nothing was sent).
static inline bool chatd_mongo_command_bson(mongoc_client_pool_t *pool, const char *database, const uint8_t *command_data,
                                            size_t command_length, bson_error_t *error, uint8_t **reply_data,
                                            uint32_t *reply_length) {
    *reply_data = NULL;
    *reply_length = 0;
    bson_t command;
    if (!bson_init_static(&command, command_data, command_length)) {
        bson_set_error(error, BSON_ERROR_INVALID, 1, "the command is not a valid BSON document");
        return false;
    }
    // Never blocks for long: the pool holds at least as many clients as the store has threads.
    mongoc_client_t *client = mongoc_client_pool_pop(pool);
    bson_t reply;
    bool ok = mongoc_client_command_simple(client, database, &command, NULL, &reply, error);
    mongoc_client_pool_push(pool, client);
    *reply_length = reply.len;
    *reply_data = (uint8_t *)bson_malloc(reply.len);
    memcpy(*reply_data, bson_get_data(&reply), reply.len);
    bson_destroy(&reply);
    return ok;
}

#endif
