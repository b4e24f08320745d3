#ifndef CHATD_CMONGOC_SHIM_H
#define CHATD_CMONGOC_SHIM_H

// libmongoc 1.23 (Debian 12's libmongoc-dev). bson_t is over-aligned (128 bytes), so Swift can neither allocate
// nor lay it out: it only ever sees bson_t pointers as opaque. The store therefore speaks extended JSON to these
// helpers, which own every bson_t on the C side.
#include <mongoc/mongoc.h>

/// The error's message: a char array, which Swift sees as a tuple.
static inline const char *chatd_bson_error_message(const bson_error_t *error) {
    return error->message;
}

/// Runs `command_json` (extended JSON) on database `database` with a client popped from `pool` and pushed back.
/// Returns the server's reply as relaxed extended JSON (free it with bson_free), or NULL when even the command
/// could not be parsed. `*ok` says whether the command succeeded; on failure `error` says why (its domain tells
/// a network or server-selection failure from an error the server answered).
static inline char *chatd_mongo_command(mongoc_client_pool_t *pool, const char *database, const char *command_json,
                                        bson_error_t *error, bool *ok) {
    *ok = false;
    bson_t *command = bson_new_from_json((const uint8_t *)command_json, -1, error);
    if (command == NULL) {
        return NULL;
    }
    // Never blocks for long: the pool holds at least as many clients as the store has threads.
    mongoc_client_t *client = mongoc_client_pool_pop(pool);
    bson_t reply;
    *ok = mongoc_client_command_simple(client, database, command, NULL, &reply, error);
    mongoc_client_pool_push(pool, client);
    bson_destroy(command);
    char *json = bson_as_relaxed_extended_json(&reply, NULL);
    bson_destroy(&reply);
    return json;
}

#endif
