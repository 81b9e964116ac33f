"""The metrics port: `/metrics`, `/healthz` (liveness) and `/readyz` (serving kubelet now), on a bounded server.

The server is the stdlib's threading HTTP server with the limits it lacks: at most `max_connections` at once
and `max_per_client` from one address (more are closed at once, so one client cannot starve the kubelet
prober or Prometheus), a per-read socket timeout, and a deadline for the whole connection that a client
trickling bytes cannot extend (a reaper thread shuts such sockets down). Each connection carries one request
(HTTP/1.0), so the deadline bounds a request too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from plugin.metrics import PluginMetrics

REAP_INTERVAL_SECONDS = 0.25
LOOP_STALL_SECONDS = 10.0  # /healthz fails when the event loop has not ticked for this long


class LoopLiveness:
    """Whether the daemon's event loop still runs: `run` ticks on the loop, `alive` is read from the HTTP
    threads, so a wedged loop fails /healthz while the HTTP server itself still answers."""

    def __init__(self) -> None:
        self._last_tick = time.monotonic()

    async def run(self) -> None:
        while True:
            self._last_tick = time.monotonic()
            await asyncio.sleep(1.0)

    def alive(self) -> bool:
        return time.monotonic() - self._last_tick < LOOP_STALL_SECONDS


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 32
    max_per_client: int = 8
    request_deadline: float = 10.0  # whole connection, however slowly the client sends
    socket_timeout: float = 5.0  # each read and write


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst is accepted (and shed) rather than left in SYN retries

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        limits: HttpLimits,
        on_reject: Callable[[str], None],
    ) -> None:
        self.limits = limits
        self._on_reject = on_reject
        self._lock = threading.Lock()
        self._per_client: Counter[str] = Counter()
        self._deadlines: dict[socket.socket, float] = {}
        self._closing = threading.Event()
        super().__init__(address, handler)
        threading.Thread(target=self._reap, name="metrics-http-reaper", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        with self._lock:
            admitted = (
                len(self._deadlines) < self.limits.max_connections
                and self._per_client[client] < self.limits.max_per_client
            )
            if admitted:
                self._per_client[client] += 1
                self._deadlines[request] = time.monotonic() + self.limits.request_deadline
        if not admitted:
            self._on_reject("too_many_connections")
            self.shutdown_request(request)  # closed at once: nothing queues behind the limit
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except Exception:
            self._release(request, client)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # a broken or reaped connection: nothing to report to a client that left
            pass
        finally:
            self._release(request, str(client_address[0]))

    def _release(self, request: Any, client: str) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
            self.shutdown_request(request)  # under the lock: the reaper never touches a closed socket

    def _reap(self) -> None:
        while not self._closing.wait(REAP_INTERVAL_SECONDS):
            now = time.monotonic()
            with self._lock:
                for request, deadline in self._deadlines.items():
                    if now >= deadline:
                        self._deadlines[request] = float("inf")  # once: its thread releases it
                        self._on_reject("deadline")
                        with contextlib.suppress(OSError):
                            request.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv

    def server_close(self) -> None:
        self._closing.set()
        super().server_close()


def serve_http(
    metrics: PluginMetrics,
    port: int,
    *,
    is_alive: Callable[[], bool],
    readiness: Callable[[], str | None],
    node: str,
    host: str = "",
    limits: HttpLimits | None = None,
) -> BoundedHTTPServer:
    """Serve the metrics port on daemon threads; the caller shuts the server down.

    `readiness()` is called for every /readyz request (None = serving, else the reason); it must be safe to call
    from another thread."""
    bounds = limits or HttpLimits()

    class Handler(BaseHTTPRequestHandler):
        timeout = bounds.socket_timeout

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, metrics.exposition())
            elif self.path == "/healthz":
                ok = is_alive()
                self._reply(200 if ok else 503, "text/plain", b"ok\n" if ok else b"unhealthy\n")
            elif self.path == "/readyz":
                reason = readiness()
                body: dict[str, object] = {"node": node, "serving": reason is None}
                if reason is not None:
                    body["reason"] = reason
                self._reply(200 if reason is None else 503, "application/json", json.dumps(body).encode())
            else:
                self._reply(404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = BoundedHTTPServer(
        (host, port), Handler, bounds, on_reject=lambda reason: metrics.http_rejected.labels(reason).inc()
    )
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
