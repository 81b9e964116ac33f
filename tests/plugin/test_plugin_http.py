"""The metrics port's HTTP server, in-process on a real TCP socket: /healthz, /readyz, and its bounds.

Loopback has the whole 127/8, so a "client" on 127.0.0.2 is another address than the prober on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from plugin.httpserve import HttpLimits, serve_http
from plugin.metrics import PluginMetrics

LIMITS = HttpLimits(max_connections=16, max_per_client=4, request_deadline=1.0, socket_timeout=0.5)


class Endpoint:
    def __init__(self) -> None:
        self.metrics = PluginMetrics()
        self.reason: str | None = None
        self.server = serve_http(
            self.metrics, 0, is_alive=lambda: True, readiness=lambda: self.reason, node="node-a",
            host="127.0.0.1", limits=LIMITS,
        )  # fmt: skip
        self.port = self.server.server_address[1]

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def connect(self, source: str = "127.0.0.2") -> socket.socket:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", self.port))
        return sock


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    yield ep
    ep.server.shutdown()
    ep.server.server_close()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes `sock` within `within` seconds (recv returns EOF or the peer resets)."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_readyz_answers_live_with_the_reason(endpoint: Endpoint) -> None:
    assert endpoint.get("/readyz") == (200, json.dumps({"node": "node-a", "serving": True}).encode())
    endpoint.reason = "aws.amazon.com/neuron not registered with kubelet yet"
    status, body = endpoint.get("/readyz")
    assert status == 503 and json.loads(body) == {"node": "node-a", "serving": False, "reason": endpoint.reason}
    assert endpoint.get("/healthz")[0] == 200  # liveness does not follow readiness


def test_an_idle_connection_is_closed_at_the_deadline(endpoint: Endpoint) -> None:
    sock = endpoint.connect()
    try:
        assert closed_by_server(sock, within=LIMITS.request_deadline + 1.5)
    finally:
        sock.close()


def test_a_slowloris_trickling_headers_is_closed_at_the_deadline(endpoint: Endpoint) -> None:
    sock = endpoint.connect()
    started = time.monotonic()
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        with pytest.raises(OSError):
            for _ in range(40):  # a header byte every 0.1 s, each inside the per-read timeout
                sock.sendall(b"X")
                time.sleep(0.1)
        assert time.monotonic() - started < LIMITS.request_deadline + 1.5
    finally:
        sock.close()


def test_connections_are_capped_per_client_and_the_prober_still_gets_through(endpoint: Endpoint) -> None:
    held = [endpoint.connect("127.0.0.2") for _ in range(LIMITS.max_per_client)]
    extra = endpoint.connect("127.0.0.2")
    try:
        assert closed_by_server(extra, within=0.5)  # shed at once, not queued behind the others
        assert endpoint.get("/healthz", timeout=1.0)[0] == 200  # another address is not starved
    finally:
        for sock in [*held, extra]:
            sock.close()
    assert endpoint.metrics.http_rejected.labels("too_many_connections")._value.get() >= 1


def test_connections_are_capped_in_total_and_threads_stay_bounded(endpoint: Endpoint) -> None:
    before = threading.active_count()
    socks = [endpoint.connect(f"127.0.1.{i}") for i in range(1, 60)]
    try:
        time.sleep(0.3)
        assert threading.active_count() - before <= LIMITS.max_connections + 2
    finally:
        for sock in socks:
            sock.close()
    time.sleep(LIMITS.request_deadline + 0.5)
    assert endpoint.get("/healthz")[0] == 200  # every slot was given back
