"""A TCP proxy for tests that cuts connections where it is told to: a weak mobile link in a box.

Between a client and a server on 127.0.0.1, stdlib only, one thread per connection. Each connection it
accepts takes the next ``Plan`` from a queue (none queued: forward untouched) and may cut it, closing both
sides (FIN) or resetting them (RST, SO_LINGER 0), at a point of the HTTP/1.1 exchange:

* ``req_head``: part way through the request line and headers (the server never sees a whole request);
* ``req_body``: part way through the request body (Content-Length), after the whole head: the server has
  begun reading (a push) or streaming (a photo PUT) when the connection dies;
* ``before_answer``: the whole request reaches the server, which answers; the proxy drops the connection as
  the first byte of the answer arrives (the server has done the work; the client never hears);
* ``answer``: part way through the answer (head + Content-Length);
* ``stall``: like ``before_answer``, but the connection stays open and silent until the client gives up
  (its timeout) — the link that hangs rather than drops.

The proxy sees the bytes only, never the meaning: it finds the head's end and Content-Length, nothing more.
What happened to each connection is kept in ``outcomes`` (``Outcome.label`` says where a cut really landed),
so a test can count its cuts instead of trusting its plans.
"""

from __future__ import annotations

import queue
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

KINDS = ("none", "req_head", "req_body", "before_answer", "answer", "stall")


@dataclass(frozen=True)
class Plan:
    kind: str = "none"
    frac: float = 0.5  # where in the head / body / answer, as a fraction of its length
    rst: bool = False  # cut with a TCP reset instead of a close
    linger: float = 0.0  # seconds to wait, after the last byte forwarded, before cutting (lets the server read it)

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


@dataclass
class Outcome:
    plan: Plan
    request_line: str = ""
    up: int = 0  # bytes forwarded client -> server
    down: int = 0  # bytes forwarded server -> client
    cut: bool = False
    # where the cut landed: req_head | push_body | photo_body | other_body | after_request | before_answer
    # | answer | stall | none (not cut); "late" if the server had answered before the request was cut
    label: str = "none"
    at_cut: dict = field(default_factory=dict)  # whatever the on_cut hook recorded


def _head_end(buf: bytes | bytearray) -> int | None:
    i = buf.find(b"\r\n\r\n")
    return None if i < 0 else i + 4


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


class ChaosProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1",
                 on_cut: Callable[[Outcome], dict] | None = None):
        self.target = (target_host, target_port)
        self.on_cut = on_cut
        self.plans: queue.SimpleQueue[Plan] = queue.SimpleQueue()
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)  # so that close() need not wait for a connection to wake accept()
        self.port = self._listener.getsockname()[1]
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="chaos-accept", daemon=True)
        self._acceptor.start()

    # -- control

    def plan_next(self, plan: Plan) -> None:
        """The plan for the next connection accepted (connections take plans in the order they arrive)."""
        self.plans.put(plan)

    def close(self) -> None:
        self._stopping = True
        self._acceptor.join(5)
        self._listener.close()
        self.settle()

    def settle(self, timeout: float = 10) -> None:
        """Wait for every connection handled so far to be finished with."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- machinery

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                plan = self.plans.get_nowait()
            except queue.Empty:
                plan = Plan()
            out = Outcome(plan=plan)
            with self._lock:
                self.outcomes.append(out)
            t = threading.Thread(target=self._serve, args=(client, out), name="chaos-conn", daemon=True)
            with self._lock:
                self._threads.append(t)
            t.start()

    def _cut(self, client: socket.socket, server: socket.socket, out: Outcome, label: str) -> None:
        if out.plan.linger:
            time.sleep(out.plan.linger)
        if out.plan.kind in ("req_head", "req_body") and select.select([server], [], [], 0)[0]:
            label = "late"  # the server answered (or closed) before the request was cut
        out.cut, out.label = True, label
        if self.on_cut is not None:
            out.at_cut = self.on_cut(out) or {}
        for s in (client, server):
            try:
                if out.plan.rst:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _serve(self, client: socket.socket, out: Outcome) -> None:
        plan = out.plan
        try:
            server = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(True)
            s.settimeout(None)
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, "up")
        sel.register(server, selectors.EVENT_READ, "down")
        up_buf = bytearray()  # everything the client sent (requests here are a few MB at most)
        up_cut: int | None = None  # forward this many request bytes, then cut
        down_buf = bytearray()  # the answer's bytes not yet forwarded (held while its head is incomplete)
        down_cut: int | None = None
        answered = False  # a byte of the answer has reached the proxy
        try:
            while True:
                events = sel.select(timeout=30)
                if not events:
                    break  # nobody moved for 30 s: give up on this connection
                for key, _ in events:
                    sock: socket.socket = key.fileobj
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if key.data == "up":
                        if not data:
                            return self._finish(client, server, out)
                        up_buf += data
                        end = _head_end(up_buf)
                        if end is not None and not out.request_line:
                            out.request_line = bytes(up_buf[:up_buf.find(b"\r\n")]).decode("latin-1")
                        if plan.kind in ("req_head", "req_body") and up_cut is None:
                            if end is None:
                                continue  # hold the bytes until the head is whole: only then is the cut placed
                            if plan.kind == "req_head":
                                up_cut = min(max(1, int(plan.frac * end)), end - 1)
                            else:
                                length = _content_length(bytes(up_buf[:end])) or 0
                                if length < 2:
                                    up_cut = end  # no body to cut into: cut right after the head
                                else:
                                    up_cut = end + min(max(1, int(plan.frac * length)), length - 1)
                        limit = len(up_buf) if up_cut is None else min(len(up_buf), up_cut)
                        if limit > out.up:
                            server.sendall(up_buf[out.up:limit])
                            out.up = limit
                        if up_cut is not None and out.up >= up_cut:
                            if answered:
                                label = "late"  # the server answered before the body was in (e.g. a photo it has)
                            elif plan.kind == "req_head":
                                label = "req_head"
                            elif up_cut == end:
                                label = "after_request"  # no body: the whole request went through
                            elif out.request_line.startswith("POST /api/v1/sync/push"):
                                label = "push_body"
                            elif out.request_line.startswith("PUT /api/v1/blobs/"):
                                label = "photo_body"
                            else:
                                label = "other_body"
                            return self._cut(client, server, out, label)
                    else:
                        if not data:
                            if down_buf:  # pragma: no cover - a plan holding bytes when the server closed
                                client.sendall(down_buf)
                                out.down += len(down_buf)
                            return self._finish(client, server, out)
                        answered = True
                        if plan.kind == "before_answer":
                            return self._cut(client, server, out, "before_answer")
                        if plan.kind == "stall":
                            sel.unregister(server)  # hold the answer; wait for the client to give up
                            continue
                        down_buf += data
                        if plan.kind == "answer":
                            if down_cut is None:
                                end = _head_end(down_buf)
                                if end is None:
                                    continue
                                total = end + (_content_length(bytes(down_buf[:end])) or 0)
                                down_cut = out.down + min(max(1, int(plan.frac * total)), total - 1)
                            n = min(len(down_buf), down_cut - out.down)
                            client.sendall(down_buf[:n])
                            out.down += n
                            del down_buf[:n]
                            if out.down >= down_cut:
                                return self._cut(client, server, out, "answer")
                        else:
                            client.sendall(down_buf)
                            out.down += len(down_buf)
                            down_buf.clear()
        except OSError:
            pass
        finally:
            sel.close()
            for s in (client, server):
                try:
                    s.close()
                except OSError:
                    pass

    def _finish(self, client: socket.socket, server: socket.socket, out: Outcome) -> None:
        """One side closed: the exchange is over (one request per connection here); close the other."""
        if out.plan.kind == "stall":
            out.cut, out.label = True, "stall"  # the client gave up on a silent connection
            if self.on_cut is not None:
                out.at_cut = self.on_cut(out) or {}
        for s in (client, server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
