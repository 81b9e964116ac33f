"""Bind on real `neuron-scheduler-extender` processes sharing one API server (tests/extender/fake_apiserver.py,
which stands in for kube-apiserver, Leases and the Binding `timeout` included): who may be bound, one write per
pod, a Binding POST slower than the deadline, several replicas racing for the last blocks through one Lease
holder, a holder that dies, and a device plugin that stops serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from neuronalloc import encode_node_state

from .builders import names_args, node_doc, node_state, pod_doc
from .fake_apiserver import FakeApiServer, fake_apiserver
from .process import Running, extender
from .serving import Http, served

LEASE = ("default", "neuron-contig-extender")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Path]]:
    with fake_apiserver(tmp_path) as served_api:
        yield served_api


@contextlib.contextmanager
def replica(kubeconfig: Path, *extra: str) -> Iterator[tuple[Running, Http]]:
    """One extender replica, ready (caches listed). The short lease duration comes from its env var (an extender
    without the flag ignores it, so the same test runs against older code)."""
    with extender("--kubeconfig", str(kubeconfig), "--port", "0", *extra,
                  env={"LEASE_DURATION": "3"}) as running:  # fmt: skip
        http = Http(f"http://127.0.0.1:{running.event('extender.listening')['port']}")
        eventually(lambda: http.get("/readyz")[0] == 200, "ready")
        yield running, http


def eventually(check: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"not within {limit} s: {what}"
        time.sleep(0.05)


def bind_doc(name: str, node: str, namespace: str = "default") -> dict[str, str]:
    return {"PodName": name, "PodNamespace": namespace, "PodUID": f"uid-{namespace}-{name}", "Node": node}


def metric(http: Http, name: str) -> float:
    text = http.get("/metrics")[1]
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def holder(fake: FakeApiServer) -> str:
    lease = fake.lease(*LEASE)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def last_block_node(name: str) -> dict[str, Any]:
    """An inf1.24xlarge with devices 4-15 held: one free 4-device block, 0-3."""
    return node_doc(name, node_state("inf1.24xlarge", used_devices=range(4, 16)))


# ---- who may be bound ----------------------------------------------------------------------------------


def test_bind_refuses_pods_that_are_not_ours(api: tuple[FakeApiServer, Path]) -> None:
    """A POST with no credentials bound payments/db-0 (default scheduler, no Neuron request) to a Neuron node."""
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.24xlarge")))
    db = pod_doc("db-0", namespace="payments")
    db["spec"]["schedulerName"] = "default-scheduler"
    fake.put("pods", db)
    fake.put("pods", pod_doc("cpu-only"))  # our scheduler, no Neuron request
    fake.put("pods", pod_doc("done", neuron=1, node_name="a", phase="Running"))
    fake.put("pods", pod_doc("ours", neuron=1))
    with replica(kubeconfig) as (_, http):
        for doc, words in [
            (bind_doc("db-0", "a", "payments"), "is for scheduler 'default-scheduler', not neuron-contig-scheduler"),
            (bind_doc("cpu-only", "a"), "asks for no Neuron resource"),
            (bind_doc("done", "a"), "already bound to node a"),
            ({**bind_doc("ours", "a"), "PodUID": "someone-else"}, "recreated"),
        ]:
            status, out = http.post("/bind", doc)
            assert status == 200 and words in out["Error"], out
        assert fake.bindings == []
        assert http.post("/bind", bind_doc("ours", "a")) == (200, {"Error": ""})
        assert fake.bindings == [("default/ours", "a")]
        assert metric(http, 'neuron_contig_extender_binds_total{reason="not_ours"}') == 1
        assert metric(http, 'neuron_contig_extender_binds_total{reason="ok"}') == 1


def test_a_bind_makes_one_write_and_reads_nothing_it_filtered(api: tuple[FakeApiServer, Path]) -> None:
    """Three reads per bind (the pod, the node, a LIST of the node's pods) made its cost grow with the cluster.
    A pod this replica filtered costs one API call, the Binding POST; a pod it did not see, one GET more."""
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.24xlarge")))
    for i in range(200):  # pods bound elsewhere in the cluster: nothing a bind should read
        fake.put("pods", pod_doc(f"other-{i}", neuron=1, node_name=f"elsewhere-{i}", phase="Running"))
    fake.put("pods", pod_doc("seen", neuron=2))
    fake.put("pods", pod_doc("unseen", neuron=2))
    with replica(kubeconfig) as (running, http):
        with contextlib.suppress(queue.Empty):  # (an extender without a lease has nothing to wait for)
            running.event("bind.view_refreshed", timeout=5)  # once, on becoming the binder: not once per bind
        assert http.post("/filter", names_args(pod_doc("seen", neuron=2), ["a"]))[1]["NodeNames"] == ["a"]
        start = len(fake.requests)
        assert http.post("/bind", bind_doc("seen", "a")) == (200, {"Error": ""})
        calls = [(m, p) for m, p, q in fake.requests[start:] if "watch=" not in q and "leases" not in p]
        assert calls == [("POST", "/api/v1/namespaces/default/pods/seen/binding")], calls
        start = len(fake.requests)
        assert http.post("/bind", bind_doc("unseen", "a")) == (200, {"Error": ""})
        calls = [(m, p) for m, p, q in fake.requests[start:] if "watch=" not in q and "leases" not in p]
        assert calls == [
            ("GET", "/api/v1/namespaces/default/pods/unseen"),
            ("POST", "/api/v1/namespaces/default/pods/unseen/binding"),
        ], calls


# ---- deadlines -----------------------------------------------------------------------------------------


async def _binds(base: str, docs: list[dict[str, str]], gap: float = 0.0) -> list[tuple[int, str, float]]:
    """(status, Error, seconds) of each bind, sent `gap` seconds apart, all in flight together."""

    async def one(session: aiohttp.ClientSession, doc: dict[str, str], delay: float) -> tuple[int, str, float]:
        await asyncio.sleep(delay)
        started = time.monotonic()
        async with session.post(base + "/bind", json=doc) as response:
            body = await response.json(content_type=None)
            return response.status, str(body.get("Error")), time.monotonic() - started

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        return await asyncio.gather(*(one(session, doc, i * gap) for i, doc in enumerate(docs)))


def test_a_binding_post_slower_than_the_deadline_never_lands_after_its_bind_failed(
    api: tuple[FakeApiServer, Path],
) -> None:
    """With a Binding POST slower than the 4.5 s handler timeout, both binds answered 503 and both bindings
    were created (the timeout released the node's lock while the thread was still binding). Now each bind
    answers before the deadline, holding the lock until its POST has an outcome, and the POST carries a deadline
    the API server enforces: nothing is bound behind the scheduler's back."""
    fake, kubeconfig = api
    fake.put("nodes", last_block_node("a"))
    fake.put("pods", pod_doc("first", neuron=4))
    fake.put("pods", pod_doc("second", neuron=4))
    fake.bind_delay = 6.0
    with replica(kubeconfig) as (_, http):
        answers = asyncio.run(_binds(http.base, [bind_doc("first", "a"), bind_doc("second", "a")], gap=0.2))
        time.sleep(fake.bind_delay + 1)  # long enough for a stalled write to land, were it going to
    assert all(status == 200 and error and seconds < 4.5 for status, error, seconds in answers), answers
    assert "whether the binding exists is unknown" in answers[0][1]
    assert fake.bindings == []


def test_a_binding_of_unknown_outcome_counts_until_the_watch_shows_it(api: tuple[FakeApiServer, Path]) -> None:
    """The worst case: the API server makes the binding after the client gave up (a write already being
    committed). The bind said its outcome was unknown; the block stays counted, so the next pod is refused, and
    the watch then shows the first pod there."""
    fake, kubeconfig = api
    fake.put("nodes", last_block_node("a"))
    fake.put("pods", pod_doc("first", neuron=4))
    fake.put("pods", pod_doc("second", neuron=4))
    fake.bind_delay, fake.bind_ignores_deadline = 6.0, True
    with replica(kubeconfig) as (_, http):
        (first,) = asyncio.run(_binds(http.base, [bind_doc("first", "a")]))
        assert "unknown" in first[1] and first[2] < 4.5
        fake.bind_delay = 0.0
        status, out = http.post("/bind", bind_doc("second", "a"))
        assert status == 200 and "no longer fits node a" in out["Error"], out
        eventually(lambda: fake.bindings == [("default/first", "a")], "the late binding", limit=10)
        status, out = http.post("/bind", bind_doc("second", "a"))
        assert "no longer fits node a" in out["Error"]
    assert fake.bindings == [("default/first", "a")]


# ---- replicas -----------------------------------------------------------------------------------------


def test_three_replicas_never_overcommit_the_last_blocks(api: tuple[FakeApiServer, Path]) -> None:
    """Two replicas binding at once both bound a pod to the one free block. Here three replicas get binds for
    two last blocks from twelve pods at once, each pod filtered on one replica and bound through another:
    exactly one pod per block, through the one Lease holder."""
    fake, kubeconfig = api
    fake.put("nodes", last_block_node("a"))
    fake.put("nodes", last_block_node("b"))
    names = [f"p{i}" for i in range(12)]
    for name in names:
        fake.put("pods", pod_doc(name, neuron=4))
    fake.bind_delay = 0.2  # every replica reads before any binding lands
    with replica(kubeconfig) as (_, one), replica(kubeconfig) as (_, two), replica(kubeconfig) as (_, three):
        https = [one, two, three]
        with contextlib.suppress(AssertionError):  # (an extender without a lease never has one: race anyway)
            eventually(lambda: sum(metric(h, "neuron_contig_extender_binder_active") for h in https) == 1, "holder", 5)
        for i, name in enumerate(names):
            https[i % 3].post("/filter", names_args(pod_doc(name, neuron=4), ["a", "b"]))

        async def burst() -> list[list[tuple[int, str, float]]]:
            return await asyncio.gather(*(
                _binds(https[(i + 1) % 3].base, [bind_doc(name, "ab"[i % 2])]) for i, name in enumerate(names)
            ))  # fmt: skip

        answers = [a for group in asyncio.run(burst()) for a in group]
        forwarded = sum(metric(h, 'neuron_contig_extender_binds_forwarded_total{result="ok"}') for h in https)
        forwarded += sum(metric(h, 'neuron_contig_extender_binds_forwarded_total{result="refused"}') for h in https)
    assert sorted(node for _, node in fake.bindings) == ["a", "b"], fake.bindings
    assert [error for _, error, _ in answers].count("") == 2
    assert all(status == 200 for status, _, _ in answers)
    assert forwarded >= 8  # two thirds of the binds reached a replica that does not hold the lease


def test_when_the_holder_dies_another_replica_takes_over_after_rereading_the_pods(
    api: tuple[FakeApiServer, Path],
) -> None:
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.24xlarge")))
    for name in ("before", "after", "graceful"):
        fake.put("pods", pod_doc(name, neuron=4))
    with replica(kubeconfig) as (first, first_http), replica(kubeconfig) as (second, second_http):
        eventually(lambda: bool(holder(fake)), "a holder")
        leader, follower = (first, second) if metric(first_http, "neuron_contig_extender_binder_active") else (
            second, first)  # fmt: skip
        follower_http = second_http if leader is first else first_http
        assert follower_http.post("/bind", bind_doc("before", "a")) == (200, {"Error": ""})  # forwarded
        dead = holder(fake)
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(5)
        started = time.monotonic()
        eventually(lambda: holder(fake) not in ("", dead), "a new holder", limit=15)
        assert time.monotonic() - started > 2  # it waited out the dead holder's lease (3 s)
        assert follower.event("bind.view_refreshed")["generation"] == 1
        assert follower_http.post("/bind", bind_doc("after", "a")) == (200, {"Error": ""})
        # A graceful stop hands the lease back at once.
        follower.proc.send_signal(signal.SIGTERM)
        assert follower.proc.wait(15) == 0
        assert holder(fake) == ""
    assert sorted(key for key, _ in fake.bindings) == ["default/after", "default/before"]


def test_a_holder_that_cannot_renew_its_lease_stops_binding(api: tuple[FakeApiServer, Path]) -> None:
    """The time fence: with the API server refusing Lease writes, the holder binds only while a successor
    cannot exist; it refuses once its last renewal is too old (3 s lease, 1 s margin), and binds again once it
    renews."""
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.24xlarge")))
    for name in ("early", "late"):
        fake.put("pods", pod_doc(name, neuron=1))
    with replica(kubeconfig) as (_, http):
        assert http.post("/bind", bind_doc("early", "a")) == (200, {"Error": ""})
        fake.lease_writes_fail = True
        time.sleep(3)
        status, out = http.post("/bind", bind_doc("late", "a"))
        assert status == 200 and "lease is not renewed" in out["Error"], out
        assert fake.bindings == [("default/early", "a")]
        fake.lease_writes_fail = False
        eventually(lambda: http.post("/bind", bind_doc("late", "a")) == (200, {"Error": ""}), "renewed again")
    assert fake.bindings == [("default/early", "a"), ("default/late", "a")]


# ---- the device plugin, live ---------------------------------------------------------------------------


@contextlib.contextmanager
def plugin_stub(answer: dict[str, Any]) -> Iterator[str]:
    """A device plugin's /readyz: `answer` holds the status and JSON it replies with (changeable)."""

    def make_app() -> web.Application:
        async def readyz(_: web.Request) -> web.Response:
            return web.json_response(answer["body"], status=answer["status"])

        app = web.Application()
        app.router.add_get("/readyz", readyz)
        return app

    with served(make_app) as (base, _):
        yield base.removeprefix("http://")


def test_bind_asks_the_plugin_and_filter_reads_the_serving_state(api: tuple[FakeApiServer, Path]) -> None:
    fake, kubeconfig = api
    answer: dict[str, Any] = {"status": 200, "body": {"node": "a", "serving": True}}
    with plugin_stub(answer) as address:
        state = dataclasses.replace(node_state("inf1.24xlarge"), plugin_address=address)
        fake.put("nodes", node_doc("a", state))
        stopped = dataclasses.replace(node_state("inf1.24xlarge"), serving=False,
                                      not_serving_reason="kubelet restarted; registering again")  # fmt: skip
        fake.put("nodes", node_doc("stopped", stopped))
        for name in ("p", "q", "r", "s"):
            fake.put("pods", pod_doc(name, neuron=1))
        with replica(kubeconfig) as (_, http):
            out = http.post("/filter", names_args(pod_doc("p", neuron=1), ["a", "stopped"]))[1]
            assert out["NodeNames"] == ["a"]
            assert "kubelet restarted" in out["FailedNodes"]["stopped"]
            assert "kubelet restarted" in http.post("/bind", bind_doc("p", "stopped"))[1]["Error"]
            answer.update(status=503, body={"node": "a", "serving": False, "reason": "SIGTERM: stopping"})
            assert "stopping" in http.post("/bind", bind_doc("p", "a"))[1]["Error"]
            answer.update(status=200, body={"node": "b", "serving": True})
            assert "serves node 'b', not this node" in http.post("/bind", bind_doc("q", "a"))[1]["Error"]
            answer.update(status=200, body={"node": "a", "serving": True})
            assert http.post("/bind", bind_doc("r", "a")) == (200, {"Error": ""})
        assert fake.bindings == [("default/r", "a")]
        gone = {**encode_node_state(node_state("inf1.24xlarge")), "neuron-contig.io/plugin-address": "127.0.0.1:9"}
        fake.put("nodes", node_doc("a", annotations=gone))
        with replica(kubeconfig) as (_, http):
            eventually(lambda: "did not answer" in http.post("/bind", bind_doc("s", "a"))[1]["Error"], "probe")
