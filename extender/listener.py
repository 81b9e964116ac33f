"""The extender's own accept loop: which connections aiohttp gets, and for how long.

aiohttp parses and answers requests, but its server has no connection cap, no time limit on a request head
(a connection that never sends a byte, or half a request line, stays open forever) and only a keep-alive
timer that starts after a first response; and asyncio's accept loop logs every failed accept once out of file
descriptors. So the extender accepts connections itself and hands each one to aiohttp's request handler,
subclassed to report where the connection is:

- connecting / head: accepted, TLS handshake or request head still arriving. Must finish within
  `header_timeout` of the accept (or, on a kept-alive connection, of the request's first byte): else 408 and
  close. A head above `max_head_bytes` gets 431 and close.
- busy: a complete head; the server's own body and handler timeouts apply from here.
- idle: a reply written, kept alive for the next request up to `idle_timeout`.

At most `max_connections` are open. Another one arriving at the cap takes the place of the longest-idle
connection, else of the oldest one still sending its head; only when every connection is busy is it refused
(a plain-HTTP client is told 503 first). So probes (`/healthz`, `/readyz`) and the scheduler's requests get in
under a flood of idle or half-sent connections, and the process never runs out of file descriptors.
Connections count from the accept, before the TLS handshake, so a flood of handshakes is bounded too.

The TLS context is asked for on every accept (`tls()`), so a rotated certificate serves the next connection.
Repeated errors are logged at most once per kind per interval (`extender.ratelog`), counted in full by the
`on_reject` callback (a metric).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from extender.ratelog import Throttle
from neuronlog import get_logger

__all__ = ["ConnectionLimits", "Listener", "effective_max_connections", "raise_fd_limit"]

log = get_logger(__name__)

_CONNECTING, _HEAD, _BUSY, _IDLE = "connecting", "head", "busy", "idle"
# Out of descriptors or kernel memory: retry the accept after a pause instead of spinning on it.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_FD_RESERVE = 64  # descriptors kept for everything but client connections: API watches and pool, logs, metrics


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 256
    header_timeout: float = 5.0  # seconds from accept (or a kept-alive request's first byte) to a complete head
    idle_timeout: float = 120.0  # seconds a kept-alive connection may wait for its next request
    max_head_bytes: int = 32 * 1024  # request line and headers together
    max_pipelined: int = 4  # requests parsed ahead of the one being answered


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one (as Go programs do at start); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def effective_max_connections(requested: int, fd_limit: int, listeners: int = 1) -> int:
    """`requested`, lowered so that every listener's connections and the reserve fit under `fd_limit`."""
    return max(8, min(requested, (fd_limit - _FD_RESERVE) // max(1, listeners)))


def _reply(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"Error": message})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Slot:
    """One connection, from accept to close."""

    __slots__ = ("handler", "head_bytes", "since", "sock", "started", "state", "task", "timer")

    def __init__(self, now: float, sock: socket.socket) -> None:
        self.sock = sock
        self.started = False  # whether `task` has begun: a task cancelled before it begins runs none of its code
        self.state = _CONNECTING
        self.since = now  # when the current state's clock started
        self.head_bytes = 0
        self.handler: _Handler | None = None
        self.task: asyncio.Task[Any] | None = None  # the handshake, until the handler is connected
        self.timer: asyncio.TimerHandle | None = None


class Listener:
    """Serves `runner`'s app on `host:port` through the extender's accept loop (see the module docstring)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        limits: ConnectionLimits,
        *,
        tls: Callable[[], ssl.SSLContext | None] | None = None,
        on_reject: Callable[[str], None] = lambda reason: None,
        backlog: int = 1024,
        name: str = "http",
    ) -> None:
        self._runner = runner
        self._host = host
        self._port = port
        self.limits = limits
        self._tls = tls
        self._on_reject = on_reject
        self._backlog = backlog
        self._name = name
        self._slots: dict[_Slot, None] = {}  # insertion-ordered: the oldest first
        self._sock: socket.socket | None = None
        self._server: web.Server | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._throttle = Throttle()
        self._handler_options: dict[str, Any] = {
            "keepalive_timeout": limits.idle_timeout,
            "access_log": None,
            "lingering_time": 0,  # an unread body closes the connection; it is never drained
            "max_line_size": 8190,
            "max_field_size": 8190,
        }

    @property
    def port(self) -> int:
        assert self._sock is not None, "not started"
        return int(self._sock.getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._slots)

    async def start(self) -> int:
        """Bind and start accepting; returns the port (useful with port 0). The runner is set up already."""
        assert self._runner.server is not None, "AppRunner.setup() first"
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=self._backlog)
        sock.setblocking(False)
        self._server = self._runner.server
        self._sock = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_forever())
        return self.port

    async def stop(self) -> None:
        """Stop accepting and abandon connections still in their handshake; aiohttp's runner closes the rest."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._sock is not None:
            self._sock.close()
        for slot in list(self._slots):
            if slot.handler is None:
                self._close(slot)

    # ---- accepting ----------------------------------------------------------------------------------------

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        pause = 0.05
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as err:
                self._on_reject("accept_error")
                self._log("accept_failed", error=repr(err), rule="accept failed; retrying after a pause")
                if err.errno in _RESOURCE_ERRNOS:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 1.0)
                continue
            pause = 0.05
            self._admit(conn, loop)

    def _admit(self, conn: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        if len(self._slots) >= self.limits.max_connections and not self._evict_one():
            self._on_reject("connections")
            self._log("connection_refused", connections=len(self._slots),
                      rule="every connection is busy at the --max-connections cap")  # fmt: skip
            if self._tls is None:
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(_reply(503, "Service Unavailable", "too many connections; retry"))
            conn.close()
            return
        slot = _Slot(loop.time(), conn)
        self._slots[slot] = None
        self._arm(slot, self.limits.header_timeout)
        slot.task = loop.create_task(self._connect(conn, slot, loop))

    async def _connect(self, conn: socket.socket, slot: _Slot, loop: asyncio.AbstractEventLoop) -> None:
        slot.started = True
        context = self._tls() if self._tls is not None else None
        server = self._server
        assert server is not None
        try:
            await loop.connect_accepted_socket(
                lambda: _Handler(self, slot, server, loop, **self._handler_options),
                conn,
                ssl=context,
                ssl_handshake_timeout=max(0.05, slot.since + self.limits.header_timeout - loop.time())
                if context is not None
                else None,
            )
        except asyncio.CancelledError:
            conn.close()
            self._drop(slot)
        except Exception as err:  # a failed TLS handshake: no certificate, a wrong CA, plain HTTP, a timeout
            conn.close()
            self._drop(slot)
            self._on_reject("tls_handshake")
            self._log("tls_handshake_failed", error=repr(err)[:300], rule="TLS handshake refused or not finished")
        finally:
            slot.task = None

    def _evict_one(self) -> bool:
        """Close the longest-idle connection, else the oldest one still sending its head. False if none."""
        victim = next((s for s in self._slots if s.state == _IDLE), None)
        if victim is None:
            victim = next((s for s in self._slots if s.state in (_CONNECTING, _HEAD)), None)
        if victim is None:
            return False
        self._log("connection_evicted", state=victim.state, rule="a new connection takes its place at the cap")
        self._close(victim)
        return True

    # ---- what the handler reports ---------------------------------------------------------------------

    def _connected(self, slot: _Slot, handler: _Handler) -> None:
        slot.handler = handler
        if slot not in self._slots:  # evicted during its handshake
            handler.force_close()

    def _first_byte(self, slot: _Slot, now: float) -> None:
        if slot.state == _IDLE:
            slot.state, slot.since, slot.head_bytes = _HEAD, now, 0
            self._arm(slot, self.limits.header_timeout)
        elif slot.state == _CONNECTING:
            slot.state = _HEAD  # the clock keeps running from the accept

    def _head_done(self, slot: _Slot, largest: int) -> None:
        slot.state, slot.head_bytes = _BUSY, 0
        self._disarm(slot)
        if largest > self.limits.max_head_bytes:
            self._head_grew(slot, largest)

    def _head_grew(self, slot: _Slot, size: int) -> None:
        slot.head_bytes += size
        if slot.head_bytes > self.limits.max_head_bytes:
            self._on_reject("head_too_large")
            self._log("head_too_large", bytes=slot.head_bytes, limit=self.limits.max_head_bytes)
            self._refuse(slot, 431, "Request Header Fields Too Large",
                         f"request head above {self.limits.max_head_bytes} bytes")  # fmt: skip

    def _answered(self, slot: _Slot, now: float) -> None:
        slot.state, slot.since = _IDLE, now
        self._arm(slot, self.limits.idle_timeout)

    def _drop(self, slot: _Slot) -> None:
        self._disarm(slot)
        self._slots.pop(slot, None)

    # ---- timers -------------------------------------------------------------------------------------------

    def _arm(self, slot: _Slot, seconds: float) -> None:
        self._disarm(slot)
        loop = asyncio.get_running_loop()
        slot.timer = loop.call_at(slot.since + seconds, self._expired, slot)

    @staticmethod
    def _disarm(slot: _Slot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    def _expired(self, slot: _Slot) -> None:
        slot.timer = None
        if slot not in self._slots:
            return
        if slot.state == _IDLE:
            self._close(slot)
        elif slot.state in (_CONNECTING, _HEAD):
            self._on_reject("header_timeout")
            self._log("header_timeout", state=slot.state, timeout_seconds=self.limits.header_timeout)
            self._refuse(slot, 408, "Request Timeout",
                         f"request head not received within {self.limits.header_timeout} s")  # fmt: skip

    # ---- closing ------------------------------------------------------------------------------------------

    def _refuse(self, slot: _Slot, status: int, reason: str, message: str) -> None:
        """Answer `status` on a connection that has no request being answered, and close it."""
        handler = slot.handler
        if handler is not None and handler.transport is not None:
            with contextlib.suppress(Exception):
                handler.transport.write(_reply(status, reason, message))
        self._close(slot)

    def _close(self, slot: _Slot) -> None:
        self._drop(slot)
        if slot.handler is not None:
            slot.handler.force_close()
        elif slot.task is not None:
            slot.task.cancel()  # asyncio closes the transport of a handshake it interrupts
            if not slot.started:
                slot.sock.close()  # no transport yet, and the task's own cleanup will never run

    def _log(self, what: str, **fields: Any) -> None:
        suppressed = self._throttle.admit(what)
        if suppressed is not None:
            log.warning(f"{self._name}.{what}", port=self._port, suppressed=suppressed, **fields)


def _head_size(message: Any) -> int:
    """About how many bytes a parsed request head took (its line and its headers)."""
    headers = getattr(message, "raw_headers", ())
    return len(str(getattr(message, "path", ""))) + sum(len(name) + len(value) + 4 for name, value in headers)


class _Handler(RequestHandler):
    """aiohttp's request handler, reporting the connection's state to its `Listener`."""

    def __init__(
        self, listener: Listener, slot: _Slot, manager: web.Server, loop: asyncio.AbstractEventLoop, **options: Any
    ) -> None:
        super().__init__(manager, loop=loop, **options)
        self._listener = listener
        self._slot = slot

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener._connected(self._slot, self)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._listener._drop(self._slot)

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            return  # closing: aiohttp drops what still arrives (the rest of a body it refused), and so do we
        slot = self._slot
        listener = self._listener
        if slot.state in (_IDLE, _CONNECTING):
            listener._first_byte(slot, self._loop.time())
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            # A head that arrived whole in one read is sized here, before its request is handled.
            heads = [m for m, _ in list(self._messages)[before - self._request_count :]]
            listener._head_done(slot, max(map(_head_size, heads), default=0))
            if len(self._messages) > listener.limits.max_pipelined:
                self.force_close()
        elif slot.state == _HEAD:
            listener._head_grew(slot, len(data))

    async def finish_response(self, request: Any, resp: Any, start_time: float | None) -> Any:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            # Idle only if the connection stays open: after a reply that closes it (a refused body), the rest of
            # that body may still arrive, and it is not the head of a next request.
            if not self._messages and not self._force_close and getattr(resp, "keep_alive", False):
                self._listener._answered(self._slot, self._loop.time())
