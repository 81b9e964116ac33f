"""Mutual TLS on the real process: a client certificate signed by --tls-client-ca-file is required (a client
without one is refused in the TLS handshake), and rotated certificate files serve new connections without a
restart."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from .builders import node_doc, node_state, nodes_args, pod_doc
from .certs import Authority, Pair, install
from .process import Running, extender

BODY = nodes_args(pod_doc("p", neuron=1), [node_doc("a", node_state("inf1.xlarge"))])


def _client(ca: Path, pair: Pair | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if pair is not None:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


def _request(port: int, context: ssl.SSLContext, path: str = "/healthz") -> tuple[bytes, str]:
    """(the reply's status line, the server certificate's common name) over a fresh TLS connection."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        peer = tls.getpeercert()
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = tls.recv(4096)
    subject = dict(item[0] for item in peer["subject"])  # type: ignore[index]
    return reply.split(b"\r\n", 1)[0], str(subject["commonName"])


def _refused(port: int, context: ssl.SSLContext) -> bool:
    """Whether the server refuses this client in the TLS layer (TLS 1.3 may report it on the first read)."""
    try:
        status, _ = _request(port, context)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return not status


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Authority, Path]:
    return Authority(tmp_path), tmp_path


def _serve(ca: Authority, server: Pair, *extra: str) -> AbstractContextManager[Running]:
    return extender("--standalone", "--port", "0", "--tls-cert-file", str(server.cert),
                    "--tls-key-file", str(server.key), "--tls-client-ca-file", str(ca.path), *extra)  # fmt: skip


def test_a_client_without_a_certificate_is_refused_in_the_handshake(pki: tuple[Authority, Path]) -> None:
    ca, directory = pki
    server = ca.issue("extender")
    scheduler = ca.issue("kube-scheduler", server=False)
    rogue = Authority(directory / "..", name="rogue-ca").issue("intruder", server=False)
    with _serve(ca, server) as running:
        record = running.event("extender.listening")
        port = record["port"]
        assert record["mutual_tls"] is True
        assert _request(port, _client(ca.path, scheduler)) == (b"HTTP/1.1 200 OK", "extender")
        assert _refused(port, _client(ca.path, None)), "no client certificate"
        assert _refused(port, _client(ca.path, rogue)), "a certificate from another CA"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not plain.recv(4096).startswith(b"HTTP/1.1 200")  # plain HTTP gets no answer
        status, _ = _request(port, _client(ca.path, scheduler), "/metrics")
        assert status == b"HTTP/1.1 200 OK"


def test_rotated_certificates_serve_new_connections_without_a_restart(pki: tuple[Authority, Path]) -> None:
    ca, directory = pki
    live = Pair(directory / "live.crt", directory / "live.key")
    first, second = ca.issue("extender-1"), ca.issue("extender-2")
    install(first.cert, live.cert)
    install(first.key, live.key)
    live_ca = directory / "live-ca.crt"
    install(ca.path, live_ca)
    scheduler = ca.issue("kube-scheduler", server=False)
    with extender("--standalone", "--port", "0", "--tls-cert-file", str(live.cert), "--tls-key-file",
                  str(live.key), "--tls-client-ca-file", str(live_ca)) as running:  # fmt: skip
        port = running.event("extender.listening")["port"]
        assert _request(port, _client(ca.path, scheduler))[1] == "extender-1"
        # Half a rotation (the new certificate, the old key): the old pair keeps serving.
        install(second.cert, live.cert)
        time.sleep(1.2)
        assert _request(port, _client(ca.path, scheduler))[1] == "extender-1"
        install(second.key, live.key)
        _eventually(lambda: _request(port, _client(ca.path, scheduler))[1] == "extender-2")
        assert running.event("tls.reloaded")["cert_file"] == str(live.cert)
        # A new client CA: the old one's clients are refused, the new one's accepted.
        new_ca = Authority(directory / "..", name="next-ca")
        install(new_ca.path, live_ca)
        newcomer = new_ca.issue("kube-scheduler-next", server=False)
        _eventually(lambda: _refused(port, _client(ca.path, scheduler)))
        assert _request(port, _client(ca.path, newcomer))[1] == "extender-2"


def _eventually(check: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "not within the limit"
        time.sleep(0.2)


def test_plain_http_is_the_default_and_says_so() -> None:
    with extender("--standalone", "--port", "0") as running:
        assert running.event("extender.listening")["tls"] is False
        assert "plain HTTP" in running.event("extender.plain_http")["rule"]


def test_the_client_ca_needs_a_serving_certificate() -> None:
    with extender("--standalone", "--port", "0", "--tls-client-ca-file", "/nonexistent/ca.crt") as running:
        assert running.proc.wait(15) == 2


def test_no_session_tickets_are_sent(pki: tuple[Authority, Path]) -> None:
    # kube-scheduler's Go client keeps no session cache, so a ticket is never used, and issuing two per handshake
    # costs the event loop a third of each handshake (bench/tls_handshake.py).
    ca, _ = pki
    server, scheduler = ca.issue("extender"), ca.issue("kube-scheduler", server=False)
    with _serve(ca, server) as running:
        port = running.event("extender.listening")["port"]
        context = _client(ca.path, scheduler)
        context.minimum_version = ssl.TLSVersion.TLSv1_3  # tickets come after the handshake: read a reply first
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")
            session = tls.session
            assert session is not None and not session.has_ticket
