"""The extender app over real HTTP on a loopback port, in --standalone (Nodes-mode, no API server) settings:
every verb, every bad-input class, and concurrent requests."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from extender.cache import ClusterStore
from extender.metrics import ExtenderMetrics
from extender.server import ServerSettings, build_app
from extender.verdicts import Verdicts

from .builders import NEURON, names_args, node_doc, node_state, nodes_args, pod_doc
from .serving import Http, served

DATA = Path(__file__).parent / "data"
CAP = 256 * 1024


@pytest.fixture
def http() -> Iterator[Http]:
    settings = ServerSettings(max_body_bytes=CAP, read_timeout=0.5, standalone=True)
    with served(lambda: build_app(settings, Verdicts(ClusterStore()), None, ExtenderMetrics())) as (base, _):
        yield Http(base)


def cluster() -> list[dict[str, object]]:
    return [
        node_doc("roomy", node_state("inf1.24xlarge")),
        node_doc("snug", node_state("inf1.24xlarge", used_devices=set(range(16)) - {6, 7})),
        node_doc("split", node_state("inf1.6xlarge", used_devices=[1])),
        node_doc("trn", node_state("trn1.32xlarge")),
        node_doc("bare", annotations={}),
    ]


def test_filter_nodes_mode(http: Http) -> None:
    status, out = http.post("/filter", nodes_args(pod_doc("p", neuron=2), cluster()))
    assert status == 200
    assert out["NodeNames"] is None and out["Error"] == ""
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["roomy", "snug", "split"]
    assert set(out["FailedNodes"]) == {"bare"} and out["FailedNodes"]["bare"].startswith("(unknown)")
    assert set(out["FailedAndUnresolvableNodes"]) == {"trn"}  # 2 devices is not a trn block size
    status, out = http.post("/filter", nodes_args(pod_doc("p", neuron=3), cluster()))
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["roomy"]
    assert set(out["FailedNodes"]) == {"snug", "split", "bare"}
    assert "no free contiguous block of 3 devices" in out["FailedNodes"]["split"]
    # No node's IDs in the reason, so the scheduler's event counts both nodes on one line.
    assert out["FailedNodes"]["split"] == out["FailedNodes"]["snug"] == "no free contiguous block of 3 devices now"
    assert set(out["FailedAndUnresolvableNodes"]) == {"trn"}
    assert "multiple of its size" in out["FailedAndUnresolvableNodes"]["trn"]


def test_prioritize_scores_every_node_best_fit_first(http: Http) -> None:
    status, out = http.post("/prioritize", nodes_args(pod_doc("p", neuron=2), cluster()))
    assert status == 200
    scores = {entry["Host"]: entry["Score"] for entry in out}
    assert set(scores) == {"roomy", "snug", "split", "trn", "bare"}
    assert all(0 <= s <= 10 for s in scores.values())
    assert scores["snug"] == 10 and scores["snug"] > scores["roomy"]
    assert scores["bare"] == 0


def test_captured_nodes_mode_document(http: Http) -> None:
    status, out = http.post("/filter", json.loads((DATA / "filter-args-nodes.json").read_text()))
    assert status == 200
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["trn-a"]
    assert "no neuron-contig.io/ annotations" in out["FailedNodes"]["cpu-only"]
    assert "neuron-contig.io/devices" in out["FailedNodes"]["garbled"]


def test_standalone_refuses_nodenames_and_bind_in_the_reply(http: Http) -> None:
    status, out = http.post("/filter", names_args(pod_doc("p", neuron=1), ["a"]))
    assert status == 200 and "standalone" in out["Error"] and out["NodeNames"] == []
    status, out = http.post("/prioritize", names_args(pod_doc("p", neuron=1), ["a"]))
    assert status == 400 and "standalone" in out["Error"]
    status, out = http.post("/bind", {"PodName": "p", "PodNamespace": "d", "PodUID": "u", "Node": "a"})
    assert status == 200 and "cannot bind" in out["Error"]


def _still_serving(http: Http) -> None:
    status, out = http.post("/filter", nodes_args(pod_doc("p", neuron=1), cluster()))
    assert status == 200 and len(out["Nodes"]["items"]) == 4


BAD_REQUESTS = [
    ("bad json", "/filter", b'{"Pod": {', "application/json", 400, "not valid JSON"),
    ("empty body", "/prioritize", b"", "application/json", 400, "not valid JSON"),
    ("wrong content type", "/filter", b"{}", "text/plain", 415, "Content-Type"),
    ("missing pod", "/filter", b'{"NodeNames": ["a"]}', "application/json", 400, "Pod"),
    (
        "wrong type",
        "/prioritize",
        b'{"Pod": {"metadata": {"name": "p"}}, "Nodes": {"items": 5}}',
        "application/json",
        400,
        "Nodes.items",
    ),
    (
        "absurd size",
        "/filter",
        orjson.dumps(nodes_args(pod_doc("p", neuron=10**9), [])),
        "application/json",
        400,
        "above 4096",
    ),
    (
        "bind missing node",
        "/bind",
        b'{"PodName": "p", "PodNamespace": "d", "Node": null}',
        "application/json",
        400,
        "Node",
    ),
    (
        "5,000-digit quantity",
        "/filter",
        orjson.dumps(
            nodes_args(pod_doc("p", containers=[{"name": "c", "resources": {"limits": {NEURON: "9" * 5000}}}]), [])
        ),
        "application/json",
        400,
        "above 4096",
    ),
    ("oversized body", "/filter", b'{"x": "' + b"a" * (CAP + 10) + b'"}', "application/json", 413, "cap"),
]


@pytest.mark.parametrize(
    ("case", "path", "body", "ctype", "status", "words"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_gets_json_4xx_and_server_keeps_serving(
    http: Http, case: str, path: str, body: bytes, ctype: str, status: int, words: str
) -> None:
    got, out = http.post(path, body=body, content_type=ctype)
    assert got == status, out
    assert words in out["Error"]
    _still_serving(http)


def test_wrong_method_and_path_get_json_errors(http: Http) -> None:
    response = http.pool.request("GET", http.base + "/filter", retries=False)
    assert response.status == 405 and "Error" in orjson.loads(response.data)
    status, out = http.post("/preempt", {})
    assert status == 404 and "Error" in out
    _still_serving(http)


def test_chunked_oversized_body_is_cut_off(http: Http) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"Pod": "'
        for _ in range(CAP // 4096 + 2):
            yield b"a" * 4096
        yield b'"}'

    response = http.pool.request(
        "POST",
        http.base + "/filter",
        body=chunks(),
        chunked=True,
        headers={"Content-Type": "application/json"},
        retries=False,
    )
    assert response.status == 413 and "cap" in orjson.loads(response.data)["Error"]
    _still_serving(http)


def test_slow_body_gets_408(http: Http) -> None:
    host, port = http.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b'POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"Pod"'
        )
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 408") and '"Error"' in reply
    _still_serving(http)


def test_health_readiness_and_metrics(http: Http) -> None:
    assert http.get("/healthz") == (200, {"status": "ok"})
    assert http.get("/readyz") == (200, {"status": "ready"})
    http.post("/filter", body=b"nope")
    http.post("/filter", nodes_args(pod_doc("p", neuron=3), cluster()))
    status, text = http.get("/metrics")
    assert status == 200
    for line in [
        'neuron_contig_extender_requests_total{result="bad_request",verb="filter"} 1.0',
        'neuron_contig_extender_requests_total{result="ok",verb="filter"} 1.0',
        'neuron_contig_extender_nodes_rejected_total{reason="unresolvable"} 1.0',
        'neuron_contig_extender_nodes_rejected_total{reason="no_block"} 2.0',
        'neuron_contig_extender_nodes_rejected_total{reason="unknown_node"} 1.0',
        'neuron_contig_extender_request_duration_seconds_count{verb="filter"} 2.0',
        "neuron_contig_extender_cache_nodes",
        "neuron_contig_extender_cache_staleness_seconds",
        'neuron_contig_extender_pods_unschedulable{resource="neuron"} 0.0',
        # Zero before the first event, like every label value above.
        'neuron_contig_extender_nodes_rejected_total{reason="not_serving"} 0.0',
        'neuron_contig_extender_binds_total{reason="ok"} 0.0',
        'neuron_contig_extender_binds_total{reason="outcome_unknown"} 0.0',
        'neuron_contig_extender_binds_forwarded_total{result="error"} 0.0',
        "neuron_contig_extender_binder_active 0.0",
        'neuron_contig_extender_http_rejected_total{reason="memory"} 0.0',
        'neuron_contig_extender_http_rejected_total{reason="header_timeout"} 0.0',
        'neuron_contig_extender_tls_reloads_total{result="error"} 0.0',
        'neuron_contig_extender_connections{port="main"}',
        "neuron_contig_extender_inflight_bytes 0.0",
    ]:
        assert line in text, line


def test_concurrent_requests_each_get_their_own_answer(http: Http) -> None:
    """60 requests in flight at once, each asking a different size: every reply matches its own request."""

    async def one(session: aiohttp.ClientSession, size: int) -> tuple[int, list[str]]:
        async with session.post(
            http.base + "/filter", json=nodes_args(pod_doc(f"p{size}", neuron=size), cluster())
        ) as r:
            body = await r.json()
            return size, [n["metadata"]["name"] for n in body["Nodes"]["items"]]

    async def burst() -> list[tuple[int, list[str]]]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(one(session, 1 + i % 4) for i in range(60)))

    expected = {1: ["roomy", "snug", "split", "trn"], 2: ["roomy", "snug", "split"], 3: ["roomy"], 4: ["roomy", "trn"]}
    for size, passed in asyncio.run(burst()):
        assert passed == expected[size], size


def test_unschedulable_pods_gauge_follows_the_latest_filter() -> None:
    from extender.metrics import ExtenderMetrics as Metrics

    metrics = Metrics()

    def gauge(resource: str) -> float:
        value = metrics.registry.get_sample_value("neuron_contig_extender_pods_unschedulable", {"resource": resource})
        assert value is not None
        return value

    metrics.pod_schedulable("a/p", {"neuron"}, False)
    metrics.pod_schedulable("a/q", {"neuron", "neuroncore"}, False)
    metrics.pod_schedulable("a/p", {"neuron"}, False)  # the same pod again counts once
    assert (gauge("neuron"), gauge("neuroncore")) == (2, 1)
    metrics.pod_schedulable("a/q", {"neuron", "neuroncore"}, True)
    assert (gauge("neuron"), gauge("neuroncore")) == (1, 0)
