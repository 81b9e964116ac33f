"""Floods and hostile clients against the real `neuron-scheduler-extender` process, in bounded counts.

Each test is one attack from issue 9 (reproduced against commit 6b44c46): what the extender must do is keep
answering, answer every refused request with a JSON 4xx or a 503 (never a 500, never a crash), stay under the
manifests' 512 Mi memory limit as the kernel counts it (VmHWM, the peak resident set), and log a flood of
errors as a handful of lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .builders import names_args, node_doc, node_state, pod_doc
from .fake_apiserver import fake_apiserver
from .process import Running, extender, memory_kib
from .serving import Http

LIMIT_MIB = 512  # deploy/: the extender container's memory limit
MiB = 1024 * 1024


def _port(running: Running) -> int:
    return int(running.event("extender.listening")["port"])


def _drain(running: Running) -> list[dict[str, Any]]:
    """Every log line the process has written so far (after a short pause for the pipe)."""
    time.sleep(0.3)
    while not running.lines.empty():
        running.seen.append(orjson.loads(running.lines.get()))
    return running.seen


def _healthz_within(port: int, seconds: float) -> bool:
    """A fresh connection, GET /healthz, a 200 within `seconds`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
            sock.settimeout(seconds)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(4096).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _nodes_body(size: int) -> bytes:
    """A Nodes-mode filter body of about `size` bytes, of Node objects as big as real ones (~10 KB each)."""
    node = node_doc("n", node_state("trn1.32xlarge"))
    node["metadata"]["labels"].update({f"label-{k}.example.com/key": f"value-{k}" for k in range(20)})
    node["status"]["images"] = [
        {"names": [f"123456789012.dkr.ecr.us-west-2.amazonaws.com/repo-{k}@sha256:{'a' * 64}"], "sizeBytes": 1 << 30}
        for k in range(40)
    ]
    one = len(orjson.dumps(node))
    items = []
    for i in range(size // one):
        copy = dict(node)
        copy["metadata"] = {**node["metadata"], "name": f"node-{i}"}
        items.append(copy)
    return orjson.dumps({"Pod": pod_doc("p", neuron=1), "Nodes": {"items": items}, "NodeNames": None})


async def _post(session: aiohttp.ClientSession, url: str, data: Any) -> int:
    """The status, or 0 when the server closed the connection before answering (it refused the body)."""
    try:
        async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, OSError):
        return 0


def test_a_flood_of_huge_bodies_stays_under_the_memory_limit() -> None:
    """Eight concurrent 58 MiB Nodes-mode bodies (which took the extender past 512 Mi and got it OOM-killed),
    eight concurrent 58 MiB chunked bodies of empty objects (20x larger once decoded) and four 60 MiB bodies of
    blanks sent slowly: every answer is 200 (a body the budget can hold), 400 (not JSON), 413, 503 or a cut
    connection, never another 5xx, and the peak stays under 512 Mi."""
    nodes = _nodes_body(58 * MiB)
    bomb = b"[" + b",".join([b"{}"] * (58 * MiB // 3)) + b"]"

    async def chunked(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1 * MiB):
            yield body[start : start + 1 * MiB]

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(60):
            yield b" " * MiB
            await asyncio.sleep(0.05)

    async def flood(base: str) -> list[int]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await asyncio.gather(
                *(_post(session, base + "/filter", nodes) for _ in range(8)),
                *(_post(session, base + "/filter", chunked(bomb)) for _ in range(8)),
                *(_post(session, base + "/prioritize", slow()) for _ in range(4)),
            )

    with extender("--standalone", "--port", "0") as running:
        port = _port(running)
        statuses = asyncio.run(flood(f"http://127.0.0.1:{port}"))
        peak = memory_kib(running.proc.pid)["VmHWM"] / 1024
        assert running.proc.poll() is None, "the extender died"
        assert _healthz_within(port, 2.0)
        small = Http(f"http://127.0.0.1:{port}").post(
            "/filter", {"Pod": pod_doc("p", neuron=1), "Nodes": {"items": [node_doc("a", node_state("inf1.xlarge"))]}}
        )
        assert small[0] == 200
    assert all(status in (0, 200, 400, 413, 503) for status in statuses), statuses
    assert statuses.count(0) < len(statuses), "every request was cut: the extender answered none"
    assert peak < LIMIT_MIB, f"peak resident memory {peak:.0f} MiB"


def test_nodenames_and_bind_bodies_are_capped_by_mode(tmp_path: Path) -> None:
    """With its node cache the extender serves NodeNames mode: a filter body above 4 MiB is refused (it
    accepted 64 MiB), and so is a bind body above 64 KiB, with a JSON 413."""
    with (
        fake_apiserver(tmp_path) as (_, kubeconfig),
        extender("--kubeconfig", str(kubeconfig), "--port", "0", "--watch-timeout", "1") as running,
    ):
        http = Http(f"http://127.0.0.1:{_port(running)}")
        pod = pod_doc("p", neuron=1)
        pod["metadata"]["annotations"] = {"padding": "x" * (5 * MiB)}
        for path in ("/filter", "/filter-best"):  # the shipped configuration's verb shares filter's cap
            status, out = http.post(path, names_args(pod, ["a"]))
            assert status == 413 and "cap" in out["Error"], path
        doc = {"PodName": "p", "PodNamespace": "default", "PodUID": "u" * 100_000, "Node": "a"}
        status, out = http.post("/bind", doc)
        assert status == 413 and "cap" in out["Error"]
        # A 3 MiB body of empty objects fits the cap but would decode to ~170 MiB on its own: refused too.
        bomb = b'{"Pod":' + orjson.dumps(pod_doc("p")) + b',"NodeNames":["a"],"x":[' + b",".join([b"{}"] * MiB) + b"]}"
        status, out = http.post("/filter", body=bomb)
        assert status == 413 and "decodes to about" in out["Error"]
        assert http.get("/healthz")[0] == 200


def test_a_slow_body_gets_408_not_the_handler_timeout() -> None:
    """docs/extender.md promises 408 for a body slower than --read-timeout; it got 503 at --handler-timeout."""
    with extender("--standalone", "--port", "0", "--read-timeout", "1", "--handler-timeout", "0.5") as running:
        port = _port(running)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"Pod\"")  # fmt: skip
            started = time.monotonic()
            reply = sock.recv(65536).decode()
            waited = time.monotonic() - started
        assert reply.startswith("HTTP/1.1 408") and '"Error"' in reply, reply
        assert 0.8 < waited < 5, waited


@contextlib.contextmanager
def _sockets(port: int, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if first_bytes:
                sock.sendall(first_bytes)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (an answer then EOF, or a reset); False while it is still open."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_half_sent_and_silent_connections_are_closed_and_healthz_answers() -> None:
    """500 half-sent requests and 100 connections that never send a byte stayed open 40 s and more. Now each
    is closed within the header timeout (5 s by default), and /healthz answers all along."""
    with extender("--standalone", "--port", "0") as running:
        port = _port(running)
        half = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: applic"
        with _sockets(port, 500, half) as halves, _sockets(port, 100, b"") as silent:
            assert _healthz_within(port, 2.0)
            deadline = time.monotonic() + 9
            open_ones = [*halves, *silent]
            while open_ones and time.monotonic() < deadline:
                open_ones = [s for s in open_ones if not _closed_by_server(s)]
                assert _healthz_within(port, 2.0)
                time.sleep(0.5)
            assert not open_ones, f"{len(open_ones)} of 600 connections still open after 9 s"
        lines = _drain(running)
        timeouts = [r for r in lines if r["event"] in ("http.header_timeout", "http.connection_evicted")]
        assert len(timeouts) <= 6, f"{len(timeouts)} log lines for one flood"


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))


def test_idle_sockets_beyond_the_fd_limit_keep_healthz_answering() -> None:
    """1,100 idle sockets under a 1,024 descriptor limit made /healthz time out and wrote 67,000 accept-error
    lines. Here: 400 idle sockets (some kept alive after a request) under a limit of 200."""
    with extender("--standalone", "--port", "0", preexec_fn=_low_fd_limit) as running:
        port = _port(running)
        with _sockets(port, 300, b"") as _, _sockets(port, 100, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
            time.sleep(1)
            assert all(_healthz_within(port, 2.0) for _ in range(5))
            metrics = Http(f"http://127.0.0.1:{port}").get("/metrics")[1]
            assert running.proc.poll() is None
        lines = _drain(running)
    open_now = next(
        line for line in metrics.splitlines() if line.startswith('neuron_contig_extender_connections{port="main"}')
    )
    assert float(open_now.split()[-1]) <= 200 - 64
    noisy = [r for r in lines if "accept" in r["event"] or "resource" in str(r.get("error", ""))]
    assert len(noisy) <= 5, noisy[:10]


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout() -> None:
    with extender("--standalone", "--port", "0", "--idle-timeout", "1") as running:
        port = _port(running)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert sock.recv(4096) == b""  # closed by the server
            assert 0.8 < time.monotonic() - started < 4


def test_an_oversized_request_head_gets_431() -> None:
    """Two thousand short headers: each under aiohttp's per-line limit, 80 KB together."""
    with extender("--standalone", "--port", "0") as running:
        port = _port(running)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-Pad-%d: %s\r\n" % (i, b"y" * 30) for i in range(2000)
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(head + b"\r\n")
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 431"), reply[:80]
        assert _healthz_within(port, 2.0)


def test_a_flood_of_bad_requests_is_logged_as_a_few_lines() -> None:
    with extender("--standalone", "--port", "0") as running:
        http = Http(f"http://127.0.0.1:{_port(running)}")
        for _ in range(300):
            assert http.post("/filter", body=b"{nope")[0] == 400
        lines = _drain(running)
    rejected = [r for r in lines if r["event"] == "request.rejected"]
    assert 1 <= len(rejected) <= 3, len(rejected)
    assert "suppressed" in rejected[0]


def test_bodies_beyond_the_inflight_budget_are_shed_with_503() -> None:
    """Twenty 3 MiB bodies at once against a 16 MiB budget: the ones that do not fit get a JSON 503 with
    Retry-After; the others are answered."""

    async def burst(base: str) -> list[tuple[int, str]]:
        async def one(session: aiohttp.ClientSession) -> tuple[int, str]:
            body = orjson.dumps({"Pod": pod_doc("p"), "Nodes": {"items": []}, "pad": "x" * (3 * MiB)})
            async with session.post(base + "/filter", data=body, headers={"Content-Type": "application/json"}) as r:
                return r.status, r.headers.get("Retry-After", "")

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return await asyncio.gather(*(one(session) for _ in range(20)))

    with extender("--standalone", "--port", "0", "--max-inflight-bytes", str(16 * MiB)) as running:
        answers = asyncio.run(burst(f"http://127.0.0.1:{_port(running)}"))
    assert {status for status, _ in answers} <= {200, 503}
    assert any(status == 503 for status, _ in answers) and any(status == 200 for status, _ in answers)
    assert all(retry == "1" for status, retry in answers if status == 503)
