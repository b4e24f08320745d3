"""Drives a chatd Socket.IO endpoint with the stock python-socketio client (and, for misbehaving clients, raw
Engine.IO over websocket-client and requests).

Usage: interop.py <scenario>; the settings come as JSON in the INTEROP environment variable:
  {"url": "http://127.0.0.1:PORT", "tokens": {"alice": "...", ...}, "chat": "chat-ab", "transports": [...]}
Each scenario asserts what a client would see and exits 0, or prints what went wrong and exits 1. Its last stdout
line is a JSON summary the Swift test checks as well.
"""
import json
import os
import random
import sys
import threading
import time

import requests
import socketio
import websocket

sys.dont_write_bytecode = True  # no __pycache__ in the tree, however this script is started
import protocol_suite  # noqa: E402

CONFIG = json.loads(os.environ["INTEROP"])
URL = CONFIG["url"]
TOKENS = CONFIG.get("tokens", {})
CHAT = CONFIG.get("chat", "chat-ab")
TRANSPORTS = CONFIG.get("transports")
WS_URL = URL.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def wait_until(condition, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("timed out waiting for " + what)


class Recorder:
    """A python-socketio client that records every event it receives (and acknowledges message:received)."""

    def __init__(self, name):
        self.name = name
        self.events = []
        self.lock = threading.Lock()
        self.client = socketio.Client(reconnection=False)
        self.connect_errors = []

        @self.client.on("*")
        def any_event(event, *args):
            with self.lock:
                self.events.append((event, args[0] if args else None))

        @self.client.on("message:received")
        def received(message):
            with self.lock:
                self.events.append(("message:received", message))
            return None  # the client library acknowledges with an empty ACK

        @self.client.event
        def connect_error(data):
            self.connect_errors.append(data)

    def connect(self, token=None, transports=TRANSPORTS, headers=None):
        auth = {"token": token if token is not None else TOKENS[self.name]}
        self.client.connect(URL, auth=auth, transports=transports, headers=headers or {}, wait_timeout=5)
        return self

    def of(self, name):
        with self.lock:
            return [payload for event, payload in self.events if event == name]

    def disconnect(self):
        # python-engineio's write loop checks its state before each send: a disconnect() that starts while a POST
        # (an acknowledgement, say) is in flight makes the loop exit with the DISCONNECT and CLOSE still queued and
        # unsent, and the server then learns of the leave only by ping timeout (45 s). So first wait (boundedly,
        # and only while connected: a closed WebSocket leaves its queue unfinished for good) until everything
        # queued so far was sent.
        deadline = time.monotonic() + 5
        while self.client.connected and self.client.eio.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        self.client.disconnect()


def summary(**values):
    print(json.dumps(values))


# Scenarios ------------------------------------------------------------------------------------------------------


def exchange():
    """Two users: a send with an ack, a send without one; the other user receives both, in order."""
    alice = Recorder("alice").connect()
    bob = Recorder("bob").connect()
    ack = alice.client.call("message:send", {"chatId": CHAT, "content": "hello bob", "clientMessageId": "c1"}, timeout=10)
    check(isinstance(ack, dict) and len(ack.get("messageId", "")) == 24, "ack carries messageId: %r" % (ack,))
    check(ack.get("chatId") == CHAT and "timestamp" in ack, "ack carries chatId and timestamp: %r" % (ack,))
    alice.client.emit("message:send", {"chatId": CHAT, "content": "second, no ack"})
    wait_until(lambda: len(bob.of("message:received")) == 2, "bob to receive two messages")
    first, second = bob.of("message:received")
    check(first["content"] == "hello bob" and second["content"] == "second, no ack", "order: %r" % [first, second])
    check(first["_id"] == ack["messageId"], "the received _id is the acknowledged messageId")
    check(first["senderId"] == {"_id": "alice", "username": "Alice"}, "senderId populated: %r" % (first["senderId"],))
    check(first["isNew"] is True and first["chatId"] == CHAT, "isNew and chatId: %r" % (first,))
    check(any(r["userId"] == "alice" for r in first["readBy"]), "readBy has the sender")
    wait_until(lambda: len(alice.of("message:sent")) == 2, "alice to get message:sent twice")
    # The other direction too.
    bob.client.call("message:send", {"chatId": CHAT, "content": "hi alice"}, timeout=10)
    wait_until(lambda: len(alice.of("message:received")) == 1, "alice to receive bob's message")
    transports = [alice.client.transport(), bob.client.transport()]
    alice.disconnect()
    bob.disconnect()
    summary(transports=transports, messageId=ack["messageId"])


def auth_failures():
    """Every bad token gets CONNECT_ERROR {"message": "unauthorized", "data": {"code": ...}}."""
    results = {}
    for case, token in CONFIG["badTokens"].items():
        client = Recorder("mallory")
        try:
            client.connect(token=token)
            client.disconnect()
            results[case] = "connected"
        except socketio.exceptions.ConnectionError:
            data = client.connect_errors[-1] if client.connect_errors else None
            check(isinstance(data, dict) and data.get("message") == "unauthorized", "%s: %r" % (case, data))
            results[case] = data["data"]["code"]
    # A token in the Authorization header instead of the auth payload.
    client = socketio.Client(reconnection=False)
    client.connect(URL, headers={"Authorization": "Bearer " + TOKENS["alice"]}, transports=TRANSPORTS, wait_timeout=5)
    results["bearer_header"] = "connected"
    client.disconnect()
    summary(**results)


def bad_requests():
    """Unknown events, non-object payloads and wrong types get message:error bad_request; the connection stays."""
    alice = Recorder("alice").connect()
    answers = [
        alice.client.call("no:such:event", {"x": 1}, timeout=10),
        alice.client.call("message:send", "just a string", timeout=10),
        alice.client.call("message:send", {"chatId": 42, "content": "x"}, timeout=10),
        alice.client.call("message:send", {"chatId": CHAT}, timeout=10),
        alice.client.call("message:send", {"chatId": CHAT, "content": ["not", "text"]}, timeout=10),
        alice.client.call("message:send", {"chatId": "no-such-chat", "content": "x"}, timeout=10),
        alice.client.call("message:send", {"chatId": CHAT, "content": ""}, timeout=10),
    ]
    codes = [a.get("code") for a in answers]
    wait_until(lambda: len(alice.of("message:error")) == len(answers), "a message:error for each refused event")
    ok = alice.client.call("message:send", {"chatId": CHAT, "content": "still connected"}, timeout=10)
    check("messageId" in ok, "a valid send works after the refusals: %r" % (ok,))
    alice.disconnect()
    summary(codes=codes, messages=[a.get("message") for a in answers])


def offline_then_reconnect():
    """Bob goes offline, alice sends three messages, bob comes back and emits user:reconnected."""
    bob = Recorder("bob").connect()
    bob.disconnect()
    alice = Recorder("alice").connect()
    ids = []
    for i in range(3):
        ids.append(alice.client.call("message:send", {"chatId": CHAT, "content": "queued %d" % i}, timeout=10)["messageId"])
    bob = Recorder("bob").connect()
    answer = bob.client.call("user:reconnected", timeout=15)
    # user:reconnected ends with user:online to bob's contacts (also sent on a first connection, which this one
    # may not be if the server has not yet seen the previous one close).
    wait_until(lambda: any(p["userId"] == "bob" for p in alice.of("user:online")), "alice to see bob online")
    received = bob.of("message:received")
    check([m["_id"] for m in received] == ids, "bob receives the three queued messages in order: %r" % (received,))
    check(all(m["isNew"] is False for m in received), "queued messages arrive with isNew false")
    check(answer == {"delivered": 3}, "the ack counts them: %r" % (answer,))
    bob.disconnect()
    wait_until(lambda: any(p["userId"] == "bob" for p in alice.of("user:offline")), "alice to see bob offline")
    alice.disconnect()
    summary(ids=ids, delivered=answer["delivered"])


# Raw Engine.IO clients ------------------------------------------------------------------------------------------


def raw_connect(token, timeout=5):
    """A raw WebSocket Engine.IO client that completes the Socket.IO CONNECT and then does nothing by itself."""
    ws = websocket.create_connection(WS_URL, timeout=timeout)
    opened = ws.recv()
    check(opened.startswith("0{"), "OPEN first: %r" % opened)
    ws.send("40" + json.dumps({"token": token}))
    reply = ws.recv()
    check(reply.startswith("40{"), "CONNECT accepted: %r" % reply)
    return ws, json.loads(opened[1:])


def ping_timeout():
    """A client that stops answering pings is closed after pingInterval + pingTimeout."""
    ws, opened = raw_connect(TOKENS["bob"])
    started = time.monotonic()
    pings = 0
    closed_after = None
    try:
        while True:
            frame = ws.recv()
            if frame == "2":
                pings += 1  # and never answer
            elif frame == "":
                break
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        pass
    closed_after = time.monotonic() - started
    limit = (opened["pingInterval"] + opened["pingTimeout"]) / 1000.0
    check(pings >= 1, "the server pinged")
    check(closed_after < limit + 2.0, "closed within pingInterval + pingTimeout (+2 s): %.2f s" % closed_after)
    summary(pings=pings, closedAfter=closed_after, limit=limit)


def close_code_of(ws):
    """Reads until the server closes: its close frame's code, or what ended the connection instead (a reset)."""
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big") if len(data) >= 2 else "no code"
    except (websocket.WebSocketConnectionClosedException, ConnectionError) as error:
        return repr(error)


def oversized():
    """A frame or POST over maxPayload closes that session only; a bystander keeps chatting."""
    bystander = Recorder("alice").connect()
    max_payload = CONFIG["maxPayload"]
    ws, _ = raw_connect(TOKENS["bob"])
    ws.send("42" + json.dumps(["message:send", {"chatId": CHAT, "content": "x" * (max_payload * 2)}]))
    close_code = close_code_of(ws)
    ws_closed = close_code is not None
    check(ws_closed, "the oversized WebSocket session is closed")
    check(close_code == 1009, "closed with 1009 (message too big), not a reset: %r" % (close_code,))
    # Text that is not UTF-8 fails the connection with 1007.
    ws, _ = raw_connect(TOKENS["bob"])
    ws.send(b"42\xff\xfe", opcode=websocket.ABNF.OPCODE_TEXT)
    utf8_code = close_code_of(ws)
    check(utf8_code == 1007, "invalid UTF-8 closes with 1007: %r" % (utf8_code,))
    # Long-polling: handshake, then a POST twice the limit.
    handshake = requests.get(URL + "/socket.io/?EIO=4&transport=polling", timeout=5)
    sid = json.loads(handshake.text[1:])["sid"]
    post = requests.post(URL + "/socket.io/?EIO=4&transport=polling&sid=" + sid, data="4" + "y" * (max_payload * 2), timeout=5)
    check(post.status_code == 413, "an oversized POST gets 413: %d %s" % (post.status_code, post.text))
    after = requests.get(URL + "/socket.io/?EIO=4&transport=polling&sid=" + sid, timeout=5)
    check(after.status_code == 400, "the oversized polling session is gone: %d" % after.status_code)
    ok = bystander.client.call("message:send", {"chatId": CHAT, "content": "unaffected"}, timeout=10)
    check("messageId" in ok, "the bystander still sends")
    bystander.disconnect()
    summary(wsClosed=ws_closed, closeCode=close_code, utf8CloseCode=utf8_code, postStatus=post.status_code)


def crash_bytes():
    """The exact inputs that once stopped the server before authentication: a non-ASCII character where a packet
    type belongs, over polling and as WebSocket text frames. Each is refused; the server keeps serving."""
    inputs = CONFIG.get("inputs", ["\u4e07", "4\u4e07", "\u0661", "4\u0661", "\u00bd"])
    statuses = []
    for text in inputs:
        handshake = requests.get(URL + "/socket.io/?EIO=4&transport=polling", timeout=5)
        sid = json.loads(handshake.text[1:])["sid"]
        post = requests.post(URL + "/socket.io/?EIO=4&transport=polling&sid=" + sid, data=text.encode("utf-8"), timeout=5)
        statuses.append(post.status_code)
        check(post.status_code in (200, 400), "%r over polling is answered, not dropped: %d" % (text, post.status_code))
        ws = websocket.create_connection(WS_URL, timeout=5)
        ws.recv()
        ws.send(text)
        ws.settimeout(1)
        try:
            while ws.recv() != "":
                pass
        except (websocket.WebSocketConnectionClosedException, websocket.WebSocketTimeoutException, ConnectionError):
            pass
        ws.close()
    alice = Recorder("alice").connect()
    ok = alice.client.call("message:send", {"chatId": CHAT, "content": "still here"}, timeout=10)
    check("messageId" in ok, "the server still accepts messages: %r" % ok)
    alice.disconnect()
    summary(statuses=statuses)


def upgrade_edges():
    """The upgrade's noop answers only the pending poll; a GET after the upgrade is refused; a second WebSocket for
    an upgraded session is accepted and closed while the first keeps working."""
    handshake = requests.get(URL + "/socket.io/?EIO=4&transport=polling", timeout=5)
    sid = json.loads(handshake.text[1:])["sid"]
    polling = URL + "/socket.io/?EIO=4&transport=polling&sid=" + sid
    check(requests.post(polling, data="40" + json.dumps({"token": TOKENS["alice"]}), timeout=5).status_code == 200, "CONNECT posted")
    check(requests.get(polling, timeout=5).text.startswith("40"), "CONNECT answered")
    pending = {}

    def poll():
        pending["response"] = requests.get(polling, timeout=10)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)
    ws = websocket.create_connection(WS_URL + "&sid=" + sid, timeout=5)
    ws.send("2probe")
    check(ws.recv() == "3probe", "probe answered")
    poller.join(5)
    check(pending.get("response") is not None and pending["response"].text == "6", "the pending poll got the noop: %r" % pending.get("response"))
    ws.send("5")
    ws.send("42" + json.dumps(["message:send", {"chatId": CHAT, "content": "over the websocket"}]))
    first = ws.recv()
    check(first.startswith("42") and "message:sent" in first, "the first frame after the upgrade is the answer, not a noop: %r" % first)
    after = requests.get(polling, timeout=5)
    check(after.status_code == 400, "a GET after the upgrade is refused: %d %r" % (after.status_code, after.text))
    second = websocket.create_connection(WS_URL + "&sid=" + sid, timeout=5)
    second_code = close_code_of(second)
    check(second_code is not None, "the second WebSocket is closed")
    ws.send("42" + json.dumps(["message:send", {"chatId": CHAT, "content": "still here"}]))
    check("message:sent" in ws.recv(), "the first WebSocket still works")
    ws.close()
    summary(pollAnswer=pending["response"].text, getAfterUpgrade=after.status_code, secondClose=second_code)


def malformed():
    """Over WebSocket, a packet that breaks the protocol closes the session, after telling the client why; a
    well-formed packet with an application error is answered with bad_request and the session stays."""
    violations = [
        ("abc", False), ("4abc", False), ("42" + json.dumps(["message:send", {}]), False), ("0", False), ("41", False),
        ("42{}", True), ("42abc" + json.dumps(["message:send", {}]), True), ("42[1,2]", True), ("42[]", True),
        ("43x[]", True), ("44{}", True), ("0", True),
    ]
    codes = []
    for packet, connect in violations:
        if connect:
            ws = raw_connect(TOKENS["carol"])[0]
        else:
            ws = websocket.create_connection(WS_URL, timeout=5)
            ws.recv()
        ws.send(packet)
        ws.settimeout(3)
        frames = []
        code = None
        try:
            while True:
                opcode, data = ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else "no code"
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    frames.append(data.decode("utf-8"))
        except websocket.WebSocketTimeoutException:
            code = None
        except (websocket.WebSocketConnectionClosedException, ConnectionError) as error:
            code = repr(error)
        ws.close()
        check(code is not None, "%r (connected: %s) closes the session; it stayed open after %r" % (packet, connect, frames))
        check(any("bad_request" in frame for frame in frames), "%r: the client is told why before the close: %r" % (packet, frames))
        codes.append(code)
    ws = raw_connect(TOKENS["carol"])[0]
    for packet in ['421["no:such:event",{}]', '422["message:send",null]', '423["message:send",{"chatId":[]}]']:
        ws.send(packet)
    acks = []
    while len(acks) < 3:
        frame = ws.recv()
        if frame.startswith("43"):
            acks.append(frame)
    check(all('"code":"bad_request"' in ack for ack in acks), "application errors are bad_request: %r" % acks)
    ws.send("2")
    frame = ws.recv()
    while frame.startswith("42"):
        frame = ws.recv()
    check(frame == "3", "the session is still up after application errors: %r" % frame)
    ws.close()
    summary(closeCodes=codes, applicationAcks=len(acks))


def hostile():
    """10,000 random and mutated packets from misbehaving clients; bystanders must not notice."""
    rng = random.Random(int(CONFIG.get("seed", 7)))
    count = int(CONFIG.get("packets", 10000))
    alice = Recorder("alice").connect()
    bob = Recorder("bob").connect()
    valid = [
        "42" + json.dumps(["message:send", {"chatId": CHAT, "content": "hi"}]),
        "421" + json.dumps(["message:send", {"chatId": CHAT, "content": "hi", "clientMessageId": "x"}]),
        "42" + json.dumps(["user:reconnected"]),
        "40" + json.dumps({"token": TOKENS["carol"]}),
        "43" + "7" + json.dumps([]),
        "2", "3", "6",
    ]
    junk = [
        "", "4", "42", "42[", "42{}", "42[1,2]", "42[\"message:send\",null]", "42[\"message:send\",{\"chatId\":[]}]",
        "4" + "9" * 40 + "[\"x\"]", "43" + "9" * 30 + "[]", "44{\"message\":\"x\"}", "45-[\"a\",{\"_placeholder\":true,\"num\":0}]",
        "40/admin,{}", "42/admin,[\"message:send\",{}]", "0{}", "5", "9", "\u00ff\u00fe", "42[\"" + "e" * 5000 + "\"]",
        "42" + "[" * 5000 + "]" * 5000,
        "4" + json.dumps({"deep": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}),
    ]

    def mutate(text):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            position = rng.randrange(len(chars) + 1)
            if op == 0 and chars:
                del chars[min(position, len(chars) - 1)]
            elif op == 1:
                chars.insert(position, chr(rng.choice([0, 1, 0x1e, 34, 44, 91, 93, 123, 125, 47, 48, 57, rng.randrange(0x20, 0x7f)])))
            elif op == 2 and chars:
                chars[min(position, len(chars) - 1)] = chr(rng.randrange(0x20, 0x7f))
            else:
                chars = chars[: max(1, position)]  # truncated
        return "".join(chars)

    class Attacker:
        """A raw connection whose reader thread notices when the server closes it."""

        def __init__(self, token):
            self.token = token
            self.open()

        def open(self):
            if self.token is None:
                self.ws = websocket.create_connection(WS_URL, timeout=5)  # never authenticates
                self.ws.recv()
            else:
                self.ws = raw_connect(self.token)[0]
            self.alive = True
            self.answered = threading.Event()
            ws = self.ws
            answered = self.answered

            def read():
                try:
                    while True:
                        try:
                            frame = ws.recv()
                        except websocket.WebSocketTimeoutException:
                            continue  # quiet for a while, not closed
                        if frame == "":
                            break
                        if frame.startswith(SYNC_ACK) or frame.startswith("44"):
                            answered.set()
                except Exception:
                    pass
                self.alive = False
                answered.set()

            threading.Thread(target=read, daemon=True).start()

        def sync(self):
            """Waits until the server has read everything sent so far: it answers a probe, or it closed the session.

            The attacker outruns a loaded server, and whatever is queued behind a packet that closes the session is
            never read; syncing every few hundred packets bounds that backlog, so the share of packets the server
            reads depends less on the machine's load."""
            self.answered.clear()
            # An authenticated attacker asks for an acknowledgement; the other one tries a CONNECT without a token.
            probe = SYNC_PROBE if self.token is not None else "40"
            try:
                self.ws.send(probe)
            except Exception:
                self.alive = False
                return
            if not self.answered.wait(5) and self.alive:
                # No answer (a mutated packet left the session in a state that ignores the probe): start over.
                self.ws.close()
                self.alive = False
                unanswered[0] += 1

    unanswered = [0]
    SYNC_ACK = "43987654"
    SYNC_PROBE = "42987654" + json.dumps(["message:send", {}])
    attackers = [Attacker(TOKENS["carol"]), Attacker(TOKENS["dave"]), Attacker(None)]
    sent = 0
    reopened = 0
    close_requests = 0
    while sent < count:
        attacker = attackers[sent % len(attackers)]
        choice = rng.random()
        if choice < 0.4:
            packet = rng.choice(junk)
        elif choice < 0.9:
            packet = mutate(rng.choice(valid + junk))
        else:
            packet = "".join(chr(rng.randrange(0, 0x250)) for _ in range(rng.randint(0, 64)))
        if not attacker.alive:
            # The server closed a session that broke the protocol (a packet that does not parse, a first packet
            # that is not CONNECT, a client OPEN); the misbehaving client comes back and carries on.
            attacker.open()
            reopened += 1
        try:
            attacker.ws.send(packet)
        except Exception:
            attacker.alive = False
            continue
        sent += 1
        if packet.startswith("1"):
            close_requests += 1  # an Engine.IO CLOSE: the attacker asked for the close itself
        if sent % 300 == 0:
            for each in attackers:
                if each.alive:
                    each.sync()
        if sent % 1000 == 0:
            ok = alice.client.call("message:send", {"chatId": CHAT, "content": "still here %d" % sent}, timeout=10)
            check("messageId" in ok, "alice can send during the attack")
    for attacker in attackers:
        try:
            attacker.ws.close()
        except Exception:
            pass
    wait_until(lambda: len([m for m in bob.of("message:received") if m["content"].startswith("still here")]) == count // 1000,
               "bob to receive every message alice sent during the attack")
    alice.disconnect()
    bob.disconnect()
    summary(sent=sent, reopened=reopened, probesUnanswered=unanswered[0], closeRequests=close_requests,
            bystanderMessages=count // 1000)


def official_protocol_suites():
    """The cases of the official Engine.IO v4 and Socket.IO v5 test suites, as they apply to chatd
    (protocol_suite.py says where chatd differs by design). Every failing case is reported."""
    suite = protocol_suite.Suite(URL, TOKENS["alice"], CHAT, CONFIG["maxPayload"])
    cases, failures = suite.run()
    check(not failures, "%d of %d cases failed:\n  %s" % (len(failures), len(cases), "\n  ".join(failures)))
    summary(cases=len(cases), passed=len(cases) - len(failures))


SCENARIOS = {
    "exchange": exchange,
    "auth": auth_failures,
    "bad-requests": bad_requests,
    "reconnect": offline_then_reconnect,
    "ping-timeout": ping_timeout,
    "oversized": oversized,
    "hostile": hostile,
    "malformed": malformed,
    "crash-bytes": crash_bytes,
    "upgrade-edges": upgrade_edges,
    "protocol-suites": official_protocol_suites,
}

if __name__ == "__main__":
    try:
        SCENARIOS[sys.argv[1]]()
    except AssertionError as error:
        print("FAILED: %s" % error, file=sys.stderr)
        sys.exit(1)
