"""The cases of the official Engine.IO v4 and Socket.IO v5 protocol test suites (socketio/engine.io-protocol and
socketio/socket.io-protocol, `test-suite/`), restated for chatd with a raw HTTP and WebSocket client.

The official suites run against an echo server without authentication. Where chatd differs by design, the case
checks what chatd does instead and says so in its name:
- a Socket.IO CONNECT needs a token (`auth.token`); without one the answer is CONNECT_ERROR `unauthorized`;
- chatd serves the main namespace only: a custom namespace gets the same CONNECT_ERROR an unknown one gets;
- there is no echo event: the "message" cases send chatd's own `message:send` and check its acknowledgement;
- binary attachments are refused with `message:error` `bad_request` (PROTOCOL.md, "Binary").

Each case returns nothing or raises AssertionError; `run()` runs them all and reports every failure, not only the
first. The server must run with pingInterval 300 ms and pingTimeout 200 ms, as the official suites expect.
"""
import json
import threading
import time

import requests
import websocket

PING_INTERVAL = 0.3
PING_TIMEOUT = 0.2


class Suite:
    def __init__(self, url, token, chat, max_payload):
        self.url = url
        self.token = token
        self.chat = chat
        self.max_payload = max_payload
        self.engine = url + "/socket.io/"
        self.ws_base = url.replace("http://", "ws://") + "/socket.io/"

    # Helpers

    def polling(self, sid=None, **query):
        params = {"EIO": "4", "transport": "polling"}
        if sid is not None:
            params["sid"] = sid
        params.update(query)
        return self.engine, params

    def open_polling(self):
        url, params = self.polling()
        response = requests.get(url, params=params, timeout=5)
        check(response.status_code == 200, "handshake: %d" % response.status_code)
        return json.loads(response.text[1:])["sid"]

    def ws(self, sid=None, query="EIO=4&transport=websocket"):
        url = self.ws_base + "?" + query + ("&sid=" + sid if sid else "")
        return websocket.create_connection(url, timeout=5)

    def while_polling(self, sid, action):
        """Runs `action` while a GET for `sid` waits (started 50 ms before); returns that GET's response (None if
        it did not end within 5 s) and what `action` returned."""
        url, params = self.polling(sid)
        answers = {}

        def poll():
            answers["poll"] = requests.get(url, params=params, timeout=5)

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.05)
        result = action()
        poller.join(5)
        return answers.get("poll"), result

    def open_ws(self):
        socket = self.ws()
        opened = socket.recv()
        check(opened.startswith("0{"), "OPEN first: %r" % opened)
        return socket

    def connect_ws(self):
        socket = self.open_ws()
        socket.send("40" + json.dumps({"token": self.token}))
        reply = next_packet(socket)
        check(reply.startswith("40{"), "CONNECT accepted: %r" % reply)
        return socket

    def check_open(self, content, upgrades):
        check(content.startswith("0"), "an OPEN packet: %r" % content)
        value = json.loads(content[1:])
        check(set(value) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}, "the OPEN's keys: %r" % value)
        check(isinstance(value["sid"], str), "sid is a string")
        check(value["upgrades"] == upgrades, "upgrades %r: %r" % (upgrades, value["upgrades"]))
        check(value["pingInterval"] == int(PING_INTERVAL * 1000), "pingInterval: %r" % value["pingInterval"])
        check(value["pingTimeout"] == int(PING_TIMEOUT * 1000), "pingTimeout: %r" % value["pingTimeout"])
        check(value["maxPayload"] == self.max_payload, "maxPayload: %r" % value["maxPayload"])

    # Engine.IO: handshake

    def eio_polling_opens_a_session(self):
        url, params = self.polling()
        response = requests.get(url, params=params, timeout=5)
        check(response.status_code == 200, "status %d" % response.status_code)
        self.check_open(response.text, ["websocket"])

    def eio_polling_refuses_a_bad_eio(self):
        for params in ({"transport": "polling"}, {"EIO": "abc", "transport": "polling"}, {"EIO": "3", "transport": "polling"}):
            response = requests.get(self.engine, params=params, timeout=5)
            check(response.status_code == 400, "%r: %d" % (params, response.status_code))

    def eio_polling_refuses_a_bad_transport(self):
        for params in ({"EIO": "4"}, {"EIO": "4", "transport": "abc"}):
            response = requests.get(self.engine, params=params, timeout=5)
            check(response.status_code == 400, "%r: %d" % (params, response.status_code))

    def eio_polling_refuses_a_bad_method(self):
        url, params = self.polling()
        check(requests.post(url, params=params, timeout=5).status_code == 400, "POST without sid")
        check(requests.put(url, params=params, timeout=5).status_code == 400, "PUT")

    def eio_websocket_opens_a_session(self):
        socket = self.ws()
        self.check_open(socket.recv(), [])
        socket.close()

    def eio_websocket_refuses_a_bad_eio_or_transport(self):
        for query in ("transport=websocket", "EIO=abc&transport=websocket", "EIO=4", "EIO=4&transport=abc"):
            try:
                socket = self.ws(query=query)
            except websocket.WebSocketBadStatusException as refused:
                check(refused.status_code == 400, "%s: %d" % (query, refused.status_code))
                continue
            check(closed(socket), "%s: neither refused nor closed" % query)

    # Engine.IO: message

    def eio_polling_closes_on_an_invalid_packet(self):
        sid = self.open_polling()
        url, params = self.polling(sid)
        try:
            check(requests.post(url, params=params, data="abc", timeout=5).status_code == 400, "POST abc")
        except requests.ConnectionError:
            pass  # allowed by the official suite: the request closed abnormally
        check(requests.get(url, params=params, timeout=5).status_code == 400, "the session is gone")

    def eio_polling_closes_on_duplicate_polls(self):
        sid = self.open_polling()
        url, params = self.polling(sid)
        first, second = self.while_polling(sid, lambda: requests.get(url, params=dict(params, t="burst"), timeout=5))
        check(second.status_code in (400, 500), "the second GET is refused: %d" % second.status_code)
        check(first is not None and first.status_code == 200 and first.text == "1", "the first GET gets a CLOSE: %r" % (first and first.text))
        check(requests.get(url, params=params, timeout=5).status_code == 400, "the session is gone")

    def eio_websocket_closes_on_an_invalid_packet(self):
        socket = self.open_ws()
        socket.send("abc")
        check(closed(socket), "the WebSocket is closed")

    # Engine.IO: heartbeat (in v4 the server pings)

    def eio_polling_ping_pong(self):
        sid = self.open_polling()
        url, params = self.polling(sid)
        for _ in range(3):
            poll = requests.get(url, params=params, timeout=5)
            check(poll.status_code == 200 and poll.text == "2", "a PING: %d %r" % (poll.status_code, poll.text))
            push = requests.post(url, params=params, data="3", timeout=5)
            check(push.status_code == 200 and push.text == "ok", "PONG accepted: %d %r" % (push.status_code, push.text))

    def eio_polling_closes_on_ping_timeout(self):
        sid = self.open_polling()
        url, params = self.polling(sid)
        time.sleep(PING_INTERVAL + PING_TIMEOUT)
        poll = requests.get(url, params=params, timeout=5)
        check(poll.status_code == 400, "closed at pingInterval + pingTimeout: %d %r" % (poll.status_code, poll.text))

    def eio_websocket_ping_pong(self):
        socket = self.open_ws()
        for _ in range(3):
            check(socket.recv() == "2", "a PING")
            socket.send("3")
        socket.close()

    def eio_websocket_closes_on_ping_timeout(self):
        socket = self.open_ws()
        started = time.monotonic()
        check(closed(socket, timeout=3), "closed")
        elapsed = time.monotonic() - started
        check(elapsed < PING_INTERVAL + PING_TIMEOUT + 0.5, "closed at pingInterval + pingTimeout: %.2f s" % elapsed)

    # Engine.IO: close

    def eio_polling_close_answers_the_pending_poll_with_a_noop(self):
        sid = self.open_polling()
        url, params = self.polling(sid)
        poll, posted = self.while_polling(sid, lambda: requests.post(url, params=params, data="1", timeout=5))
        check(posted.status_code == 200, "CLOSE posted")
        check(poll is not None and poll.status_code == 200 and poll.text == "6", "the pending GET gets a noop: %r" % (poll and poll.text))
        check(requests.get(url, params=params, timeout=5).status_code == 400, "the session is gone")

    def eio_websocket_close(self):
        socket = self.open_ws()
        socket.send("1")
        check(closed(socket), "closed")

    # Engine.IO: upgrade

    def upgrade(self, sid):
        """Probes a WebSocket for the polling session `sid` while a GET waits; returns the socket and that GET."""

        def probe():
            socket = self.ws(sid)
            socket.send("2probe")
            check(socket.recv() == "3probe", "the probe is answered")
            return socket

        poll, socket = self.while_polling(sid, probe)
        return socket, poll

    def eio_upgrades_from_polling_to_websocket(self):
        sid = self.open_polling()
        socket, poll = self.upgrade(sid)
        check(poll is not None and poll.status_code == 200 and poll.text == "6", "the pending GET gets a noop: %r" % (poll and poll.text))
        socket.send("5")
        socket.send("40" + json.dumps({"token": self.token}))
        check(next_packet(socket).startswith("40{"), "the upgraded WebSocket carries the session")
        socket.close()

    def eio_refuses_http_after_the_upgrade(self):
        sid = self.open_polling()
        socket, _ = self.upgrade(sid)
        socket.send("5")
        # The server reads one WebSocket's frames in order: once the CONNECT after the `5` is answered, the upgrade
        # is complete. (A GET sent right after the `5` can reach the server first; it is then a poll of the
        # still-polling session, answered by a noop when the upgrade completes, as the protocol says.)
        socket.send("40" + json.dumps({"token": self.token}))
        check(next_packet(socket).startswith("40{"), "the upgraded WebSocket carries the session")
        url, params = self.polling(sid)
        check(requests.get(url, params=params, timeout=5).status_code == 400, "a GET after the upgrade")
        socket.send("42457" + json.dumps(["message:send", {"chatId": self.chat, "content": "after the refused GET"}]))
        ack = next_packet(socket, lambda packet: packet.startswith("43"))
        check(ack.startswith("43457[") and "messageId" in json.loads(ack[5:])[0], "the WebSocket still works: %r" % ack)
        socket.close()

    def eio_closes_a_second_websocket_after_the_upgrade(self):
        sid = self.open_polling()
        socket, _ = self.upgrade(sid)
        socket.send("5")
        # The CONNECT after the `5` answered: the upgrade is complete (see the case above).
        socket.send("40" + json.dumps({"token": self.token}))
        check(next_packet(socket).startswith("40{"), "the upgraded WebSocket carries the session")
        second = self.ws(sid)
        check(closed(second), "the second WebSocket is closed")
        socket.send("42458" + json.dumps(["message:send", {"chatId": self.chat, "content": "after the second WebSocket"}]))
        ack = next_packet(socket, lambda packet: packet.startswith("43"))
        check(ack.startswith("43458[") and "messageId" in json.loads(ack[5:])[0], "the first WebSocket still works: %r" % ack)
        socket.close()

    # Socket.IO: connect

    def sio_connects_to_the_main_namespace_with_a_token(self):
        socket = self.open_ws()
        socket.send("40" + json.dumps({"token": self.token}))
        reply = next_packet(socket)
        check(reply.startswith("40{"), "CONNECT: %r" % reply)
        check(set(json.loads(reply[2:])) == {"sid"}, "the handshake holds the sid only: %r" % reply)
        socket.close()

    def sio_refuses_the_main_namespace_without_a_token(self):
        socket = self.open_ws()
        socket.send("40")
        reply = next_packet(socket)
        check(reply.startswith("44{") and json.loads(reply[2:])["message"] == "unauthorized", "CONNECT_ERROR: %r" % reply)
        socket.close()

    def sio_refuses_a_custom_namespace(self):
        for namespace in ("/custom", "/random"):
            socket = self.open_ws()
            socket.send("40" + namespace + "," + json.dumps({"token": self.token}))
            reply = next_packet(socket)
            check(reply == '44%s,{"message":"Invalid namespace"}' % namespace, "%s: %r" % (namespace, reply))
            socket.close()

    def sio_closes_on_an_invalid_handshake(self):
        socket = self.open_ws()
        socket.send("4abc")
        check(closed(socket), "closed")

    # Socket.IO: disconnect

    def sio_disconnect_from_the_main_namespace_closes(self):
        socket = self.connect_ws()
        socket.send("41")
        check(closed(socket), "closed")

    # Socket.IO: message

    def sio_event_with_an_ack(self):
        socket = self.connect_ws()
        socket.send("42456" + json.dumps(["message:send", {"chatId": self.chat, "content": "protocol suite"}]))
        ack = next_packet(socket, lambda packet: packet.startswith("43"))
        check(ack.startswith("43456["), "the ack carries the id: %r" % ack)
        check("messageId" in json.loads(ack[5:])[0], "the ack is message:send's answer: %r" % ack)
        socket.close()

    def sio_refuses_binary_attachments(self):
        socket = self.connect_ws()
        socket.send('451-["message:send",{"_placeholder":true,"num":0}]')
        socket.send_binary(bytes([1, 2, 3]))
        refusal = next_packet(socket, lambda packet: packet.startswith("42"))
        check("message:error" in refusal and "bad_request" in refusal, "refused: %r" % refusal)
        socket.send("427" + json.dumps(["message:send", {"chatId": self.chat, "content": "after the binary"}]))
        ack = next_packet(socket, lambda packet: packet.startswith("43"))
        check(ack.startswith("437[") and "messageId" in ack, "the connection stays: %r" % ack)
        socket.close()

    def run(self):
        cases = [name for name in dir(self) if name.startswith(("eio_", "sio_"))]
        failures = []
        for name in cases:
            try:
                getattr(self, name)()
            except Exception as error:  # every failure is reported, not only the first
                failures.append("%s: %s: %s" % (name, type(error).__name__, error))
        return cases, failures


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def next_packet(socket, accept=lambda packet: True):
    """The next text packet `accept` takes, skipping the server's PINGs (answered) and anything else."""
    while True:
        packet = socket.recv()
        if packet == "2":
            socket.send("3")
            continue
        if accept(packet):
            return packet


def closed(socket, timeout=3):
    """Whether the server closes the WebSocket within `timeout` seconds (a close frame or the end of the stream)."""
    socket.settimeout(timeout)
    try:
        while True:
            opcode, _ = socket.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return True
    except websocket.WebSocketTimeoutException:
        return False
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return True
    finally:
        socket.close()
