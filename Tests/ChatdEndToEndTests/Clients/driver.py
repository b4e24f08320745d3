"""A remote control for stock python-socketio clients, so an end-to-end test can script users step by step.

It listens on a loopback port (printed as the first stdout line) and takes JSON POSTs to /<command>:
  connect      {"user", "url", "token", "transports"?, "ackDelayMs"?}  -> {"sid"}
  disconnect   {"user"}
  send         {"user", "chatId", "content", "clientMessageId"?}      -> the ack (message:sent or message:error payload)
  reconnected  {"user", "wait"?}                                        -> the ack {"delivered"} (or {} with wait false)
  events       {"user", "name"?}                                        -> [[name, payload], ...] received so far
  status       {"user"}                                                 -> {"connected", "transport"}
Each "user" is one socketio.Client (a user, or one device of a user: the token says who) without automatic
reconnection; it acknowledges message:received (after ackDelayMs, to make a drain take a while).
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import socketio

clients = {}
lock = threading.Lock()


class User:
    def __init__(self, name, ack_delay):
        self.name = name
        self.events = []
        self.lock = threading.Lock()
        self.client = socketio.Client(reconnection=False)
        self.ack_delay = ack_delay / 1000.0
        if not self.ack_delay:
            # python-engineio hands each incoming packet to a thread of its own, so two events that arrived in order
            # could be recorded swapped (a test saw two adjacent messages "out of order"). Handled on the read loop
            # instead, events are recorded in the order they arrived. A client that acknowledges slowly keeps the
            # threads, so its acknowledgements overlap as a real slow client's would (its tests compare sets).
            eio = self.client.eio
            trigger = eio._trigger_event

            def in_order(event, *args, **kwargs):
                if event == "message":
                    kwargs["run_async"] = False
                return trigger(event, *args, **kwargs)

            eio._trigger_event = in_order

        @self.client.on("*")
        def any_event(event, *args):
            with self.lock:
                self.events.append([event, args[0] if args else None])

        @self.client.on("message:received")
        def received(message):
            if self.ack_delay:
                time.sleep(self.ack_delay)
            with self.lock:
                self.events.append(["message:received", message])

        @self.client.event
        def connect_error(data):
            with self.lock:
                self.events.append(["connect_error", data])

        @self.client.event
        def disconnect(*args):
            with self.lock:
                self.events.append(["disconnect", None])


def leave(client):
    # python-engineio's write loop checks its state before each send: a disconnect() that starts while a send is
    # in flight makes it exit with the DISCONNECT still queued and unsent (the server then sees the leave only by
    # ping timeout). Wait (boundedly, and only while connected: a closed WebSocket leaves its queue unfinished for
    # good) until everything queued so far was sent first.
    deadline = time.monotonic() + 5
    while client.connected and client.eio.queue.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.005)
    client.disconnect()


def command(name, body):
    user = body.get("user")
    if name == "connect":
        client = User(user, body.get("ackDelayMs", 0))
        with lock:
            old = clients.get(user)
            clients[user] = client
        if old is not None:
            try:
                leave(old.client)
            except Exception:
                pass
        client.client.connect(body["url"], auth={"token": body["token"]}, transports=body.get("transports"), wait_timeout=10)
        return {"sid": client.client.get_sid()}
    client = clients[user]
    if name == "disconnect":
        leave(client.client)
        return {}
    if name == "send":
        payload = {"chatId": body["chatId"], "content": body["content"]}
        if "clientMessageId" in body:
            payload["clientMessageId"] = body["clientMessageId"]
        return client.client.call("message:send", payload, timeout=body.get("timeout", 15))
    if name == "reconnected":
        if body.get("wait", True):
            return client.client.call("user:reconnected", timeout=body.get("timeout", 60))
        client.client.emit("user:reconnected")
        return {}
    if name == "emit":
        # Any event, with its acknowledgement awaited (and returned) when asked for.
        if body.get("ack", True):
            return client.client.call(body["event"], body.get("payload"), timeout=body.get("timeout", 15))
        client.client.emit(body["event"], body.get("payload"))
        return {}
    if name == "events":
        with client.lock:
            events = list(client.events)
        wanted = body.get("name")
        return [e for e in events if wanted is None or e[0] == wanted]
    if name == "status":
        return {"connected": client.client.connected, "transport": client.client.transport() if client.client.connected else None}
    raise ValueError("unknown command " + name)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        try:
            result = {"ok": True, "result": command(self.path.strip("/"), body)}
            status = 200
        except Exception as error:  # reported to the test, which fails with it
            result = {"ok": False, "error": "%s: %s" % (type(error).__name__, error)}
            status = 500
        data = json.dumps(result).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
