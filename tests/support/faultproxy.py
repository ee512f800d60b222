"""Fault-injecting proxies on 127.0.0.1 for the fault tests (S3 over HTTP, MySQL over TCP).

``HttpFaultProxy`` is a threaded HTTP/1.1 forwarder put between an S3 client and the
moto endpoint (point the client's ``endpoint_url`` at :attr:`HttpFaultProxy.url`).
Each request is read whole, matched against the armed :class:`Fault` rules (method,
path, optionally a header), and then either forwarded unchanged or failed:

* ``"slowdown"``: ``503 SlowDown`` (S3's throttling answer), the request not forwarded;
* ``"internal"``: ``500 InternalError``, not forwarded;
* ``"deny"``: ``403 AccessDenied`` (a read-only location), not forwarded;
* ``"drop-request"``: the connection is closed before anything is forwarded;
* ``"drop-response"``: the request *is* forwarded (it takes effect), then the connection
  is closed halfway through the response (half the body, or half the head when there
  is no body) - a lost answer to a request that succeeded.

A rule fails the ``first`` N requests it matches (after letting ``skip`` through), or
each matching request with probability ``rate`` drawn from one ``random.Random(seed)``
in arrival order (so a run whose request order is deterministic gets the same faults
every time), and never more than ``limit`` of them. Every request is recorded in
:attr:`HttpFaultProxy.log`, and ``observe`` callbacks see each request before it is
answered (to check what a reader would see at that moment).

``TcpFaultProxy`` forwards raw bytes (a MySQL connection) and can break connections:
all current ones at once (:meth:`TcpFaultProxy.cut_all`), or each new one once it has
carried ``after_bytes`` from the server to the client, by closing it (``"cut"``) or by
silently no longer forwarding anything (``"freeze"``, a black hole).

Both are bounded: sockets time out (``timeout`` seconds), :meth:`stop` closes every
connection and joins every thread it started, and both are context managers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import random
import re
import selectors
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Fault", "HttpFaultProxy", "Record", "TcpFaultProxy"]

_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError",
                 "We encountered an internal error. Please try again."),
    "deny": (403, "Forbidden", "AccessDenied", "Access Denied"),
}
KINDS = (*_ERRORS, "drop-request", "drop-response")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "expect", "content-length"}


@dataclasses.dataclass
class Fault:
    """One fault rule; the first armed rule matching a request decides about it."""

    kind: str
    method: str = ".*"  #: regex, full match against the HTTP method
    path: str = ".*"  #: regex, searched in the request target (path and query)
    header: tuple[str, str] | None = None  #: (name, regex) a header must match
    body: str | None = None  #: regex searched in the body (e.g. the keys of a bulk delete)
    first: int | None = None  #: fail the first N matching requests (else use ``rate``)
    skip: int = 0  #: with ``first``: let this many matching requests through before
    rate: float = 1.0  #: probability of failing a matching request
    limit: int | None = None  #: never more faults than this
    seen: int = 0  #: matching requests so far
    injected: int = 0  #: faults injected so far

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {KINDS}")
        self._method = re.compile(self.method)
        self._path = re.compile(self.path)
        self._header = None if self.header is None else \
            (self.header[0].lower(), re.compile(self.header[1]))
        self._body = None if self.body is None else re.compile(self.body.encode())

    def matches(self, method: str, path: str, headers: Any, body: bytes = b"") -> bool:
        if not self._method.fullmatch(method) or not self._path.search(path):
            return False
        if self._body is not None and not self._body.search(body):
            return False
        if self._header is None:
            return True
        value = headers.get(self._header[0])
        return value is not None and bool(self._header[1].search(value))

    @classmethod
    def under(cls, kind: str, bucket: str, prefix: str, *, method: str = ".*",
              **kwargs: Any) -> list[Fault]:
        """Rules failing every request that touches keys under ``bucket/prefix``: object
        requests, listings of the prefix, bulk deletes naming such keys, copies from it."""
        key = re.escape(f"/{bucket}/{prefix}")
        listed = re.escape("prefix=" + urllib.parse.quote(prefix, safe=""))
        return [
            cls(kind, method=method, path=f"^{key}", **kwargs),
            cls(kind, method=method, path=f"^/{re.escape(bucket)}/?\\?.*{listed}", **kwargs),
            cls(kind, method=method, path=f"^/{re.escape(bucket)}/?\\?delete",
                body=f"<Key>{re.escape(prefix)}", **kwargs),
        ]


@dataclasses.dataclass(frozen=True)
class Record:
    """One request seen by the proxy."""

    method: str
    path: str
    headers: dict[str, str]
    fault: str | None
    status: int | None  # what the client was sent (None: nothing whole)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread
    allow_reuse_address = True
    proxy: HttpFaultProxy


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        threading.current_thread().name = "faultproxy-http-connection"
        self.timeout = self.server.proxy.timeout
        super().setup()
        self.server.proxy._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
              *, cut: bool = False) -> None:
        head = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
        raw_head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if cut:  # half the body, or half the head when there is no body
            data = raw_head + body[: len(body) // 2] if body else raw_head[: len(raw_head) // 2]
            self.wfile.write(data)
            self._drop()
            return
        self.wfile.write(raw_head + body)
        self.wfile.flush()

    def _handle(self) -> None:
        try:
            self._answer()
        except Exception as exc:  # noqa: BLE001 - recorded for the test, then a dropped line
            self.server.proxy.errors.append(exc)
            self._drop()

    def _answer(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        kind = proxy._decide(self.command, self.path, self.headers, body)
        for callback in list(proxy._observers):
            callback(self.command, self.path, self.headers, kind)
        if kind == "drop-request":
            proxy._record(self.command, self.path, self.headers, kind, None)
            self._drop()
            return
        if kind in _ERRORS:
            status, reason, code, message = _ERRORS[kind]
            xml = b"" if self.command == "HEAD" else (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<RequestId>faultproxy</RequestId></Error>").encode()
            headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(xml))),
                       ("x-amz-request-id", "faultproxy")]
            proxy._record(self.command, self.path, self.headers, kind, status)
            self._send(status, reason, headers, xml)
            return
        status, reason, headers, data = proxy._forward(self.command, self.path, self.headers,
                                                       body)
        if self.command != "HEAD" and status not in (204, 304):
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(data))))
        proxy._record(self.command, self.path, self.headers, kind,
                      None if kind == "drop-response" else status)
        self._send(status, reason, headers, data, cut=kind == "drop-response")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class HttpFaultProxy:
    """A fault-injecting HTTP forwarder on a free port of 127.0.0.1 (see the module doc)."""

    def __init__(self, upstream: str, *, seed: int = 0, timeout: float = 30.0,
                 max_requests: int = 20_000):
        match = re.fullmatch(r"http://([^:/]+):(\d+)/?", upstream)
        if match is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (match[1], int(match[2]))
        self.timeout = timeout
        self.max_requests = max_requests
        self.rules: list[Fault] = []
        self.log: list[Record] = []
        #: exceptions raised while answering (an observer's, the upstream's): a test
        #: should check it is empty
        self.errors: list[BaseException] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._observers: list[Callable[[str, str, Any, str | None], None]] = []
        self._sockets: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> HttpFaultProxy:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultproxy-http", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        """Stop accepting, close every client connection, join every thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()  # joins the handler threads (they end once their socket is shut)
        assert self._thread is not None
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "proxy thread did not stop"

    def __enter__(self) -> HttpFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- rules

    def add(self, *rules: Fault) -> list[Fault]:
        """Arm rules (checked in the order added); returns them, to read their counters."""
        with self._lock:
            self.rules.extend(rules)
        return list(rules)

    def clear(self) -> None:
        """Disarm every rule: from now on every request is forwarded."""
        with self._lock:
            self.rules.clear()

    def observe(self, callback: Callable[[str, str, Any, str | None], None]) -> None:
        """Call ``callback(method, path, headers, fault)`` before each request is answered."""
        self._observers.append(callback)

    def faults(self) -> list[Record]:
        """The requests that were failed."""
        with self._lock:
            return [r for r in self.log if r.fault]

    # -- internals (handler threads)

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(sock)

    def _decide(self, method: str, path: str, headers: Any, body: bytes) -> str | None:
        with self._lock:
            if len(self.log) >= self.max_requests:
                raise RuntimeError(f"fault proxy: more than {self.max_requests} requests")
            for rule in self.rules:
                if not rule.matches(method, path, headers, body):
                    continue
                rule.seen += 1
                if rule.limit is not None and rule.injected >= rule.limit:
                    return None
                if rule.first is not None:
                    hit = rule.skip < rule.seen <= rule.skip + rule.first
                else:
                    hit = self._random.random() < rule.rate
                if hit:
                    rule.injected += 1
                    return rule.kind
                return None
        return None

    def _record(self, method: str, path: str, headers: Any, fault: str | None,
                status: int | None) -> None:
        with self._lock:
            self.log.append(Record(method, path, dict(headers.items()), fault, status))

    def _forward(self, method: str, path: str, headers: Any,
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=self.timeout)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    conn.putheader(key, value)
            if body or method in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            data = response.read()
            out = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP
                   or k.lower() == "content-length"]
            return response.status, response.reason, out, data
        finally:
            conn.close()


# --------------------------------------------------------------------------------------------
# raw TCP


class TcpFaultProxy:
    """A byte forwarder on a free port of 127.0.0.1 that can break its connections.

    Args:
        upstream: ``(host, port)`` of the real server.
        after_bytes: break a connection once it has carried this many bytes from the
            server to the client; ``None``: never (but see :meth:`cut_all`).
        action: how to break it: ``"cut"`` closes both sides (a reset), ``"freeze"``
            keeps both open and stops forwarding (a black hole, as in a failover; the
            client only notices through its own read timeout).
        spare_first: connections numbered ``<= spare_first`` (1-based, in accept order)
            are never broken by ``after_bytes``.
        timeout: a connection idle this long in both directions is closed.
    """

    def __init__(self, upstream: tuple[str, int], *, after_bytes: int | None = None,
                 action: str = "cut", spare_first: int = 0, timeout: float = 60.0):
        if action not in ("cut", "freeze"):
            raise ValueError(f"action must be 'cut' or 'freeze', got {action!r}")
        self.upstream = upstream
        self.after_bytes = after_bytes
        self.action = action
        self.spare_first = spare_first
        self.timeout = timeout
        self.accepted = 0  #: connections accepted so far
        self.broken = 0  #: connections cut or frozen by the proxy so far
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pairs: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port it listens on (known once started, kept after it stops)."""
        assert self._port is not None, "start() the proxy first"
        return self._port

    def start(self) -> TcpFaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._spawn(self._accept_loop, "faultproxy-tcp-accept")
        return self

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=self.timeout)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                number = self.accepted
                self._pairs[number] = (client, server)
            self._spawn(self._pump, f"faultproxy-tcp-{number}", number, client, server)

    def _pump(self, number: int, client: socket.socket, server: socket.socket) -> None:
        limit = self.after_bytes if number > self.spare_first else None
        down = 0
        frozen = False
        sel = selectors.DefaultSelector()
        try:
            client.setblocking(False)
            server.setblocking(False)
            sel.register(client, selectors.EVENT_READ, server)
            sel.register(server, selectors.EVENT_READ, client)
            idle_since = time.monotonic()
            while not self._stop.is_set():
                try:
                    events = sel.select(timeout=0.05)
                except (OSError, ValueError):  # a socket closed by cut_all()
                    return
                if not events:
                    if time.monotonic() - idle_since > self.timeout:
                        return
                    continue
                idle_since = time.monotonic()
                for key, _ in events:
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    try:
                        data = src.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    if frozen:
                        continue  # a black hole: swallow both ways, until the client gives up
                    if src is server and limit is not None and down + len(data) >= limit:
                        data = data[: max(0, limit - down)]
                        with self._lock:
                            self.broken += 1
                        if self.action == "cut":
                            self._send(dst, data)
                            return
                        self._send(dst, data)
                        frozen = True
                        continue
                    if src is server:
                        down += len(data)
                    if not self._send(dst, data):
                        return
        finally:
            sel.close()
            self._close_pair(number)

    @staticmethod
    def _send(dst: socket.socket, data: bytes) -> bool:
        dst.setblocking(True)
        try:
            dst.sendall(data)
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                dst.setblocking(False)

    def _close_pair(self, number: int) -> None:
        with self._lock:
            pair = self._pairs.pop(number, None)
        for sock in pair or ():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut_all(self) -> int:
        """Close every current connection (a network failure); returns how many."""
        with self._lock:
            numbers = list(self._pairs)
            self.broken += len(numbers)
        for number in numbers:
            self._close_pair(number)
        return len(numbers)

    def live(self) -> int:
        """Connections currently open."""
        with self._lock:
            return len(self._pairs)

    def stop(self) -> None:
        """Stop accepting, close every connection, join every thread."""
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            numbers = list(self._pairs)
        for number in numbers:
            self._close_pair(number)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in threads), "proxy threads did not stop"

    def __enter__(self) -> TcpFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def live_threads(prefix: str = "faultproxy") -> Iterator[threading.Thread]:
    """Threads of these proxies still running (for teardown checks)."""
    return (t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive())
