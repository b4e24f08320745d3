#ifndef CHATD_CRABBITMQ_SHIM_H
#define CHATD_CRABBITMQ_SHIM_H

// rabbitmq-c 0.11 (Debian 12's librabbitmq-dev). Swift cannot call its variadic amqp_login, build its argument
// tables (unions) comfortably, or keep amqp_cstring_bytes' pointers alive, so these helpers do that work in C.
// Every helper runs on the adapter's own connection thread.
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/// Describes a reply in the library's or the broker's own words; returns 2 for a channel close (the channel must be
/// reopened), 1 for a connection-level failure, 0 for success.
static inline int chatd_amqp_describe(amqp_rpc_reply_t reply, char *buffer, size_t length) {
    switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buffer, length, "ok");
        return 0;
    case AMQP_RESPONSE_NONE:
        snprintf(buffer, length, "no reply from the broker");
        return 1;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buffer, length, "%s", amqp_error_string2(reply.library_error));
        return 1;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *close = (amqp_channel_close_t *)reply.reply.decoded;
            snprintf(buffer, length, "channel closed by the broker: %u %.*s", close->reply_code,
                     (int)close->reply_text.len, (const char *)close->reply_text.bytes);
            return 2;
        }
        if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *close = (amqp_connection_close_t *)reply.reply.decoded;
            snprintf(buffer, length, "connection closed by the broker: %u %.*s", close->reply_code,
                     (int)close->reply_text.len, (const char *)close->reply_text.bytes);
            return 1;
        }
        snprintf(buffer, length, "unexpected broker method 0x%08X", reply.reply.id);
        return 1;
    }
    snprintf(buffer, length, "unknown reply");
    return 1;
}

/// Opens a TCP connection and logs in with PLAIN; returns the connection (check `*reply` and `*status`).
static inline amqp_connection_state_t chatd_amqp_connect(const char *host, int port, const char *vhost,
                                                         const char *user, const char *password, int heartbeat,
                                                         long timeout_ms, int *status, amqp_rpc_reply_t *reply) {
    amqp_connection_state_t connection = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(connection);
    struct timeval timeout = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    *status = amqp_socket_open_noblock(socket, host, port, &timeout);
    if (*status != AMQP_STATUS_OK) {
        return connection;
    }
    *reply = amqp_login(connection, vhost, 0, 131072, heartbeat, AMQP_SASL_METHOD_PLAIN, user, password);
    return connection;
}

/// The status's text.
static inline const char *chatd_amqp_status_text(int status) {
    return amqp_error_string2(status);
}

/// Declares a durable queue with the offline queue's arguments (any of them left out when 0 or NULL).
static inline amqp_queue_declare_ok_t *chatd_amqp_declare_queue(amqp_connection_state_t connection,
                                                                amqp_channel_t channel, const char *queue,
                                                                int passive, int64_t ttl_ms, int64_t max_length,
                                                                int reject_publish, const char *dead_letter_exchange,
                                                                int quorum) {
    amqp_table_entry_t entries[5];
    int count = 0;
    if (ttl_ms > 0) {
        entries[count].key = amqp_cstring_bytes("x-message-ttl");
        entries[count].value.kind = AMQP_FIELD_KIND_I64;
        entries[count].value.value.i64 = ttl_ms;
        count++;
    }
    if (max_length > 0) {
        entries[count].key = amqp_cstring_bytes("x-max-length");
        entries[count].value.kind = AMQP_FIELD_KIND_I64;
        entries[count].value.value.i64 = max_length;
        count++;
    }
    if (reject_publish) {
        entries[count].key = amqp_cstring_bytes("x-overflow");
        entries[count].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[count].value.value.bytes = amqp_cstring_bytes("reject-publish");
        count++;
    }
    if (dead_letter_exchange != NULL) {
        entries[count].key = amqp_cstring_bytes("x-dead-letter-exchange");
        entries[count].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[count].value.value.bytes = amqp_cstring_bytes(dead_letter_exchange);
        count++;
    }
    if (quorum) {
        entries[count].key = amqp_cstring_bytes("x-queue-type");
        entries[count].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[count].value.value.bytes = amqp_cstring_bytes("quorum");
        count++;
    }
    amqp_table_t arguments = { count, entries };
    return amqp_queue_declare(connection, channel, amqp_cstring_bytes(queue), passive, 1, 0, 0,
                              passive ? amqp_empty_table : arguments);
}

/// Declares a durable exchange of `type`.
static inline void chatd_amqp_declare_exchange(amqp_connection_state_t connection, amqp_channel_t channel,
                                               const char *exchange, const char *type) {
    amqp_exchange_declare(connection, channel, amqp_cstring_bytes(exchange), amqp_cstring_bytes(type), 0, 1, 0, 0,
                          amqp_empty_table);
}

/// Binds `queue` to `exchange` with `routing_key`.
static inline void chatd_amqp_bind(amqp_connection_state_t connection, amqp_channel_t channel, const char *queue,
                                   const char *exchange, const char *routing_key) {
    amqp_queue_bind(connection, channel, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(routing_key), amqp_empty_table);
}

/// Publishes a persistent JSON message with `mandatory` set; returns the library status.
static inline int chatd_amqp_publish(amqp_connection_state_t connection, amqp_channel_t channel, const char *exchange,
                                     const char *routing_key, const void *body, size_t length, const char *message_id) {
    amqp_basic_properties_t properties;
    memset(&properties, 0, sizeof(properties));
    properties._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    properties.content_type = amqp_cstring_bytes("application/json");
    properties.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    properties.message_id = amqp_cstring_bytes(message_id);
    amqp_bytes_t bytes = { length, (void *)body };
    return amqp_basic_publish(connection, channel, amqp_cstring_bytes(exchange), amqp_cstring_bytes(routing_key), 1,
                              0, &properties, bytes);
}

/// Kinds of frame chatd_amqp_wait_confirm reports.
enum { CHATD_AMQP_TIMEOUT = 0, CHATD_AMQP_ACK = 1, CHATD_AMQP_NACK = 2, CHATD_AMQP_RETURN = 3,
       CHATD_AMQP_CHANNEL_CLOSED = 4, CHATD_AMQP_FAILED = -1 };

/// Waits up to `timeout_ms` for the next publisher confirm (or return, or close) on the connection. A return
/// also fills `routing_key` and `message_id` (the returned message's), so the caller knows which publish it was.
static inline int chatd_amqp_wait_confirm(amqp_connection_state_t connection, long timeout_ms, uint64_t *tag,
                                          int *multiple, char *text, size_t text_length, char *routing_key,
                                          size_t routing_key_length, char *message_id, size_t message_id_length) {
    struct timeval timeout = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    amqp_frame_t frame;
    for (;;) {
        amqp_maybe_release_buffers(connection);
        int status = amqp_simple_wait_frame_noblock(connection, &frame, &timeout);
        if (status == AMQP_STATUS_TIMEOUT) {
            return CHATD_AMQP_TIMEOUT;
        }
        if (status != AMQP_STATUS_OK) {
            snprintf(text, text_length, "%s", amqp_error_string2(status));
            return CHATD_AMQP_FAILED;
        }
        if (frame.frame_type != AMQP_FRAME_METHOD) {
            continue;
        }
        switch (frame.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *ack = (amqp_basic_ack_t *)frame.payload.method.decoded;
            *tag = ack->delivery_tag;
            *multiple = ack->multiple;
            return CHATD_AMQP_ACK;
        }
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *nack = (amqp_basic_nack_t *)frame.payload.method.decoded;
            *tag = nack->delivery_tag;
            *multiple = nack->multiple;
            return CHATD_AMQP_NACK;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            amqp_basic_return_t *returned = (amqp_basic_return_t *)frame.payload.method.decoded;
            snprintf(text, text_length, "%u %.*s", returned->reply_code, (int)returned->reply_text.len,
                     (const char *)returned->reply_text.bytes);
            snprintf(routing_key, routing_key_length, "%.*s", (int)returned->routing_key.len,
                     (const char *)returned->routing_key.bytes);
            message_id[0] = 0;
            // The returned message's header and body follow; read them so the stream stays in step.
            amqp_message_t message;
            amqp_rpc_reply_t reply = amqp_read_message(connection, frame.channel, &message, 0);
            if (reply.reply_type == AMQP_RESPONSE_NORMAL) {
                if (message.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
                    snprintf(message_id, message_id_length, "%.*s", (int)message.properties.message_id.len,
                             (const char *)message.properties.message_id.bytes);
                }
                amqp_destroy_message(&message);
            }
            return CHATD_AMQP_RETURN;
        }
        case AMQP_CHANNEL_CLOSE_METHOD: {
            amqp_channel_close_t *close = (amqp_channel_close_t *)frame.payload.method.decoded;
            snprintf(text, text_length, "channel closed by the broker: %u %.*s", close->reply_code,
                     (int)close->reply_text.len, (const char *)close->reply_text.bytes);
            amqp_channel_close_ok_t close_ok;
            amqp_send_method(connection, frame.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
            return CHATD_AMQP_CHANNEL_CLOSED;
        }
        case AMQP_CONNECTION_CLOSE_METHOD: {
            amqp_connection_close_t *close = (amqp_connection_close_t *)frame.payload.method.decoded;
            snprintf(text, text_length, "connection closed by the broker: %u %.*s", close->reply_code,
                     (int)close->reply_text.len, (const char *)close->reply_text.bytes);
            return CHATD_AMQP_FAILED;
        }
        default:
            continue;
        }
    }
}

/// Answers a channel close the broker sent (so the channel id can be opened again).
static inline void chatd_amqp_close_ok(amqp_connection_state_t connection, amqp_channel_t channel) {
    amqp_channel_close_ok_t close_ok;
    amqp_send_method(connection, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
}

/// One message taken with basic.get; `body` is malloc'd (free it with free()).
typedef struct {
    void *body;
    size_t length;
    uint64_t delivery_tag;
    int redelivered;
    char death_reason[32];
} chatd_amqp_got_t;

/// Reads the reason of the newest x-death entry of a dead-lettered message ("expired", "rejected", "maxlen").
static inline void chatd_amqp_death_reason(const amqp_basic_properties_t *properties, char *buffer, size_t length) {
    buffer[0] = 0;
    if (!(properties->_flags & AMQP_BASIC_HEADERS_FLAG)) {
        return;
    }
    for (int i = 0; i < properties->headers.num_entries; i++) {
        amqp_table_entry_t *entry = &properties->headers.entries[i];
        if (entry->key.len != 7 || memcmp(entry->key.bytes, "x-death", 7) != 0) {
            continue;
        }
        if (entry->value.kind != AMQP_FIELD_KIND_ARRAY || entry->value.value.array.num_entries == 0) {
            return;
        }
        amqp_field_value_t *first = &entry->value.value.array.entries[0];
        if (first->kind != AMQP_FIELD_KIND_TABLE) {
            return;
        }
        for (int j = 0; j < first->value.table.num_entries; j++) {
            amqp_table_entry_t *field = &first->value.table.entries[j];
            if (field->key.len == 6 && memcmp(field->key.bytes, "reason", 6) == 0 &&
                (field->value.kind == AMQP_FIELD_KIND_UTF8 || field->value.kind == AMQP_FIELD_KIND_BYTES)) {
                snprintf(buffer, length, "%.*s", (int)field->value.value.bytes.len,
                         (const char *)field->value.value.bytes.bytes);
            }
        }
    }
}

/// basic.get on `queue`: returns 1 with `got` filled, 0 when the queue is empty, or -1 with `*reply` set.
static inline int chatd_amqp_get(amqp_connection_state_t connection, amqp_channel_t channel, const char *queue,
                                 chatd_amqp_got_t *got, amqp_rpc_reply_t *reply) {
    amqp_maybe_release_buffers(connection);
    *reply = amqp_basic_get(connection, channel, amqp_cstring_bytes(queue), 0);
    if (reply->reply_type != AMQP_RESPONSE_NORMAL) {
        return -1;
    }
    if (reply->reply.id == AMQP_BASIC_GET_EMPTY_METHOD) {
        return 0;
    }
    amqp_basic_get_ok_t *ok = (amqp_basic_get_ok_t *)reply->reply.decoded;
    got->delivery_tag = ok->delivery_tag;
    got->redelivered = ok->redelivered;
    amqp_message_t message;
    *reply = amqp_read_message(connection, channel, &message, 0);
    if (reply->reply_type != AMQP_RESPONSE_NORMAL) {
        return -1;
    }
    got->length = message.body.len;
    got->body = malloc(message.body.len > 0 ? message.body.len : 1);
    memcpy(got->body, message.body.bytes, message.body.len);
    chatd_amqp_death_reason(&message.properties, got->death_reason, sizeof(got->death_reason));
    amqp_destroy_message(&message);
    return 1;
}

/// Sets the prefetch window (basic.qos) and starts consuming `queue` with manual acknowledgements.
static inline amqp_rpc_reply_t chatd_amqp_consume(amqp_connection_state_t connection, amqp_channel_t channel,
                                                  const char *queue, uint16_t prefetch, const char *consumer_tag) {
    amqp_basic_qos(connection, channel, 0, prefetch, 0);
    amqp_rpc_reply_t reply = amqp_get_rpc_reply(connection);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        return reply;
    }
    amqp_basic_consume(connection, channel, amqp_cstring_bytes(queue), amqp_cstring_bytes(consumer_tag), 0, 0, 0,
                       amqp_empty_table);
    return amqp_get_rpc_reply(connection);
}

/// Ends a consumer so that its connection can serve another one: cancels it, returns every delivery not
/// acknowledged (read or not) to its queue with one `basic.nack` (tag 0, multiple: all outstanding, requeued), and
/// drops the deliveries that were on their way (a round trip after the nack: they arrive before its answer, and
/// rabbitmq-c queues them while it waits). Returns 0, or -1 when the connection is no longer fit for reuse.
static inline int chatd_amqp_release_consumer(amqp_connection_state_t connection, amqp_channel_t channel,
                                              const char *consumer_tag) {
    amqp_basic_cancel(connection, channel, amqp_cstring_bytes(consumer_tag));
    if (amqp_get_rpc_reply(connection).reply_type != AMQP_RESPONSE_NORMAL) {
        return -1;
    }
    if (amqp_basic_nack(connection, channel, 0, 1, 1) != AMQP_STATUS_OK) {
        return -1;
    }
    amqp_basic_qos(connection, channel, 0, 1, 0);
    if (amqp_get_rpc_reply(connection).reply_type != AMQP_RESPONSE_NORMAL) {
        return -1;
    }
    while (amqp_frames_enqueued(connection)) {
        amqp_frame_t frame;
        struct timeval zero = { 0, 0 };
        if (amqp_simple_wait_frame_noblock(connection, &frame, &zero) != AMQP_STATUS_OK) {
            return -1;
        }
    }
    amqp_maybe_release_buffers(connection);
    return 0;
}

/// The message count of `queue` by a passive declare (frames that arrive meanwhile stay queued for
/// chatd_amqp_next_delivery); returns -1 with `*reply` set on failure.
static inline int64_t chatd_amqp_ready_count(amqp_connection_state_t connection, amqp_channel_t channel,
                                             const char *queue, amqp_rpc_reply_t *reply) {
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(connection, channel, amqp_cstring_bytes(queue), 1, 1, 0, 0,
                                                     amqp_empty_table);
    *reply = amqp_get_rpc_reply(connection);
    if (ok == NULL || reply->reply_type != AMQP_RESPONSE_NORMAL) {
        return -1;
    }
    return ok->message_count;
}

/// Waits up to `timeout_ms` (0: only what has arrived) for the consumer's next delivery: 1 with `got` filled,
/// 0 on timeout, -1 with `text` set when the connection or channel failed.
static inline int chatd_amqp_next_delivery(amqp_connection_state_t connection, long timeout_ms, chatd_amqp_got_t *got,
                                           char *text, size_t text_length) {
    struct timeval timeout = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    amqp_envelope_t envelope;
    amqp_maybe_release_buffers(connection);
    amqp_rpc_reply_t reply = amqp_consume_message(connection, &envelope, &timeout, 0);
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && reply.library_error == AMQP_STATUS_TIMEOUT) {
        return 0;
    }
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        chatd_amqp_describe(reply, text, text_length);
        return -1;
    }
    got->delivery_tag = envelope.delivery_tag;
    got->redelivered = envelope.redelivered;
    got->length = envelope.message.body.len;
    got->body = malloc(got->length > 0 ? got->length : 1);
    memcpy(got->body, envelope.message.body.bytes, got->length);
    got->death_reason[0] = 0;
    amqp_destroy_envelope(&envelope);
    return 1;
}

#endif
