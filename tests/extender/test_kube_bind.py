"""The Binding POST sent on the event loop (`KubeApi.bind_async`) speaks to the API server as the generated client
does: over TLS checked against the kubeconfig's CA, with its client certificate and its bearer token (read through
the client's auth settings on every call), the pod's UID as a precondition and the deadline on both ends.

The API server is a small aiohttp app over real TLS that records what it was sent; the binding rules themselves
are tests/extender/fake_apiserver.py's (test_binder.py), the real API server's are the cluster tier's.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from extender.kube import ApiException, KubeApi

from .certs import Authority
from .serving import served


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: tuple[int, dict[str, Any]] = (201, {"kind": "Status", "status": "Success", "code": 201})
        self.stall = 0.0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/namespaces/{ns}/pods/{name}/binding", self.bind)
        return app

    async def bind(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        self.requests.append({
            "path": request.path, "timeout": request.query.get("timeout"),
            "authorization": request.headers.get("Authorization"), "client": subject.get("commonName"),
            "body": orjson.loads(await request.read()),
        })  # fmt: skip
        await asyncio.sleep(self.stall)
        status, doc = self.answer
        return web.json_response(doc, status=status)


@contextmanager
def tls_apiserver(tmp: Path, *, server_ca: Authority, client_ca: Authority) -> Iterator[tuple[Recorder, str]]:
    pair = server_ca.issue("apiserver", client=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    context.load_verify_locations(cafile=client_ca.path)
    context.verify_mode = ssl.CERT_REQUIRED
    recorder = Recorder()
    with served(recorder.app, context) as (base, _):
        yield recorder, base


def kubeconfig(tmp: Path, server: str, ca: Authority, token: str) -> str:
    client = ca.issue("neuron-contig-extender", server=False)
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": str(ca.path)}}],
        "users": [{"name": "u", "user": {"token": token, "client-certificate": str(client.cert),
                                          "client-key": str(client.key)}}],
    }  # fmt: skip
    path = tmp / "kubeconfig"
    path.write_text(json.dumps(doc))
    return str(path)


async def bind(kube: KubeApi, *, timeout: float = 2.0, name: str = "p") -> None:
    try:
        await kube.bind_async("default", name, "uid-1", "node-a", timeout=timeout)
    finally:
        await kube.close()


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "cluster-ca")


def test_the_binding_carries_the_clients_credentials_uid_and_deadline(tmp_path: Path, ca: Authority) -> None:
    with tls_apiserver(tmp_path, server_ca=ca, client_ca=ca) as (recorder, base):
        kube = KubeApi(kubeconfig(tmp_path, base, ca, "not-a-secret"))
        assert kube.binds_on_loop
        asyncio.run(bind(kube, timeout=2.0))
    [seen] = recorder.requests
    assert seen["path"] == "/api/v1/namespaces/default/pods/p/binding"
    assert seen["authorization"] == "Bearer not-a-secret"
    assert seen["client"] == "neuron-contig-extender"
    assert seen["timeout"] == "2000ms"  # the API server's deadline is the client's
    assert seen["body"] == {
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "p", "namespace": "default", "uid": "uid-1"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"},
    }  # fmt: skip


def test_a_refreshed_token_is_sent_on_the_next_binding(tmp_path: Path, ca: Authority) -> None:
    # In a pod the client re-reads the projected service-account token through this hook before each call.
    with tls_apiserver(tmp_path, server_ca=ca, client_ca=ca) as (recorder, base):
        kube = KubeApi(kubeconfig(tmp_path, base, ca, "first"))
        asyncio.run(bind(kube, name="p"))

        def rotated(configuration: Any) -> None:
            configuration.api_key["authorization"] = "Bearer second"  # as the in-cluster loader writes it

        kube._configuration.refresh_api_key_hook = rotated
        asyncio.run(bind(kube, name="q"))
    assert [r["authorization"] for r in recorder.requests] == ["Bearer first", "Bearer second"]


def test_a_refusal_is_the_api_servers_status(tmp_path: Path, ca: Authority) -> None:
    message = 'Operation cannot be fulfilled on pods/binding "p": pod p is already assigned to node "node-b"'
    with tls_apiserver(tmp_path, server_ca=ca, client_ca=ca) as (recorder, base):
        recorder.answer = (409, {"kind": "Status", "status": "Failure", "code": 409, "message": message})
        kube = KubeApi(kubeconfig(tmp_path, base, ca, "t"))
        with pytest.raises(ApiException) as caught:
            asyncio.run(bind(kube))
    assert caught.value.status == 409
    assert orjson.loads(caught.value.body)["message"] == message  # what the binder reads "assigned to" from


def test_a_server_the_kubeconfigs_ca_did_not_sign_gets_no_binding(tmp_path: Path, ca: Authority) -> None:
    stranger = Authority(tmp_path, "stranger-ca")
    with tls_apiserver(tmp_path, server_ca=stranger, client_ca=ca) as (recorder, base):
        kube = KubeApi(kubeconfig(tmp_path, base, ca, "not-a-secret"))
        with pytest.raises(Exception) as caught:
            asyncio.run(bind(kube))
    assert not isinstance(caught.value, ApiException)  # the outcome is a failure to connect, not an answer
    assert recorder.requests == []  # the token never left


def test_a_stalled_binding_gives_up_at_its_deadline(tmp_path: Path, ca: Authority) -> None:
    with tls_apiserver(tmp_path, server_ca=ca, client_ca=ca) as (recorder, base):
        recorder.stall = 5.0
        kube = KubeApi(kubeconfig(tmp_path, base, ca, "t"))
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            asyncio.run(bind(kube, timeout=0.5))
        took = time.monotonic() - began
    assert took < 2.0  # the handshake, then 0.5 s: not the server's 5 s
    assert recorder.requests[0]["timeout"] == "500ms"
