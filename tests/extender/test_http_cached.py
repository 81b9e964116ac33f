"""The extender in nodeCacheCapable mode over real HTTP, its cache fed by list+watch from an API server.

The API server here is tests/extender/fake_apiserver.py, which stands in for kube-apiserver (see its docstring);
the cluster tier runs the same scenarios against a real one. Covered: NodeNames filter/prioritize from the
cache, the cache following watch events (and relisting after 410 Gone), bound-but-unpublished pods, bind,
the burst (many binds racing for one block: exactly one wins), and two replicas agreeing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from extender.bind import Binder
from extender.cache import ClusterStore
from extender.kube import KubeApi, Reflector
from extender.main import pending_reflector, reflectors_for
from extender.metrics import ExtenderMetrics
from extender.server import ServerSettings, build_app
from extender.verdicts import Verdicts
from neuronalloc import encode_node_state

from .builders import names_args, node_doc, node_state, pod_doc
from .fake_apiserver import FakeApiServer, fake_apiserver
from .serving import Http, served


@contextmanager
def extender(kubeconfig: Path) -> Iterator[Http]:
    """An extender replica wired exactly as `main` wires it (real client, reflectors, binder), on a real port."""
    api = KubeApi(str(kubeconfig))
    view = Verdicts(ClusterStore())
    reflectors: list[Reflector] = []

    def make_app() -> Any:
        reflectors.extend(reflectors_for(api, view.store, asyncio.get_event_loop(), watch_timeout=1))
        for reflector in reflectors:
            reflector.start()
        return build_app(ServerSettings(), view, Binder(api, view), ExtenderMetrics())

    with served(make_app) as (base, _):
        http = Http(base)
        eventually(lambda: http.get("/readyz")[0] == 200, "cache synced")
        try:
            yield http
        finally:
            for reflector in reflectors:
                reflector.stop()
            for reflector in reflectors:
                reflector.join(10)


def eventually(check: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"not within {limit} s: {what}"
        time.sleep(0.05)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Path]]:
    with fake_apiserver(tmp_path) as served_api:
        yield served_api


def passed(http: Http, pod: dict[str, Any], names: list[str]) -> list[str]:
    status, out = http.post("/filter", names_args(pod, names))
    assert status == 200 and out["Error"] == "", out
    return list(out["NodeNames"])


def test_nodenames_filter_and_prioritize_from_the_cache(api: tuple[FakeApiServer, Path]) -> None:
    fake, kubeconfig = api
    fake.put("nodes", node_doc("roomy", node_state("inf1.24xlarge")))
    fake.put("nodes", node_doc("snug", node_state("inf1.24xlarge", used_devices=set(range(16)) - {8, 9})))
    fake.put("nodes", node_doc("trn", node_state("trn1.32xlarge")))
    fake.put("nodes", node_doc("cpu", annotations={}))
    with extender(kubeconfig) as http:
        names = ["roomy", "snug", "trn", "cpu", "ghost"]
        status, out = http.post("/filter", names_args(pod_doc("p", neuron=2), names))
        assert status == 200 and out["Nodes"] is None
        assert out["NodeNames"] == ["roomy", "snug"]  # all feasible nodes, in the request's order
        assert set(out["FailedAndUnresolvableNodes"]) == {"trn"}
        assert "not in the extender's node cache" in out["FailedNodes"]["ghost"]
        assert "no neuron-contig.io/ annotations" in out["FailedNodes"]["cpu"]
        status, scores = http.post("/prioritize", names_args(pod_doc("p", neuron=2), names))
        by_host = {s["Host"]: s["Score"] for s in scores}
        assert by_host["snug"] == 10 and 0 < by_host["roomy"] < 10
        assert by_host["trn"] == by_host["cpu"] == by_host["ghost"] == 0


def test_cache_follows_watch_events_and_relists_after_410(api: tuple[FakeApiServer, Path]) -> None:
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.6xlarge")))
    with extender(kubeconfig) as http:
        pod = pod_doc("p", neuron=4)
        assert passed(http, pod, ["a", "b"]) == ["a"]
        fake.put("nodes", node_doc("a", node_state("inf1.6xlarge", used_devices=[2])))
        eventually(lambda: passed(http, pod, ["a"]) == [], "node update seen")
        fake.compact()  # the next watch renewal gets 410 Gone and must list again
        fake.put("nodes", node_doc("b", node_state("inf1.6xlarge")))
        eventually(lambda: passed(http, pod, ["a", "b"]) == ["b"], "new node seen after relist")
        fake.delete("nodes", "b")
        eventually(lambda: passed(http, pod, ["a", "b"]) == [], "deleted node gone")


def test_bound_pod_not_yet_published_is_counted(api: tuple[FakeApiServer, Path]) -> None:
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.6xlarge")))
    with extender(kubeconfig) as http:
        pod = pod_doc("p", neuron=2)
        assert passed(http, pod, ["a"]) == ["a"]
        fake.put("pods", pod_doc("earlier", neuron=3, node_name="a", phase="Running"))
        eventually(lambda: passed(http, pod, ["a"]) == [], "bound pod counted")
        # The plugin publishes the pod: the state now accounts for it; it must not be counted twice.
        from neuronalloc import PodHolding

        state = node_state(
            "inf1.6xlarge", used_devices=[0, 1, 2], pods={"default/earlier": PodHolding(frozenset({0, 1, 2}))}
        )
        fake.put("nodes", node_doc("a", state))
        eventually(lambda: passed(http, pod_doc("one", neuron=1), ["a"]) == ["a"], "published pod not doubled")
        fake.put("pods", pod_doc("earlier", neuron=3, node_name="a", phase="Succeeded"))
        eventually(lambda: passed(http, pod_doc("one", neuron=1), ["a"]) == ["a"], "finished pod dropped")


def test_bind_binds_and_the_next_filter_sees_it(api: tuple[FakeApiServer, Path]) -> None:
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.6xlarge")))
    first, second = pod_doc("first", neuron=4), pod_doc("second", neuron=4)
    fake.put("pods", first)
    fake.put("pods", second)
    with extender(kubeconfig) as http:
        status, out = http.post(
            "/bind", {"PodName": "first", "PodNamespace": "default", "PodUID": "uid-default-first", "Node": "a"}
        )
        assert (status, out) == (200, {"Error": ""})
        assert fake.bindings == [("default/first", "a")]
        # Right away (remembered binding or watch, whichever is first), the block is no longer offered.
        assert passed(http, second, ["a"]) == []
        status, out = http.post(
            "/bind", {"PodName": "second", "PodNamespace": "default", "PodUID": "uid-default-second", "Node": "a"}
        )
        assert status == 200 and "no longer fits node a" in out["Error"]
        # The refusal names this node's specifics: what is free (nothing) and the block rule.
        assert "no free contiguous block of 4 devices now" in out["Error"]
        assert "free []" in out["Error"] and "consecutive device IDs" in out["Error"], out["Error"]
        assert fake.bindings == [("default/first", "a")]


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"PodName": "ghost", "PodNamespace": "default", "PodUID": "u", "Node": "a"}, "does not exist"),
        ({"PodName": "p", "PodNamespace": "default", "PodUID": "other-uid", "Node": "a"}, "recreated"),
        ({"PodName": "p", "PodNamespace": "default", "PodUID": "uid-default-p", "Node": "garbled"}, "(unknown)"),
        ({"PodName": "p", "PodNamespace": "default", "PodUID": "uid-default-p", "Node": "nowhere"}, "not in the"),
    ],
    ids=["pod-missing", "uid-mismatch", "node-garbled", "node-missing"],
)
def test_bind_errors_are_reported_not_raised(api: tuple[FakeApiServer, Path], doc: dict[str, str], words: str) -> None:
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.6xlarge")))
    notes = {**encode_node_state(node_state("inf1.6xlarge")), "neuron-contig.io/free-devices": "x"}
    fake.put("nodes", node_doc("garbled", annotations=notes))
    fake.put("pods", pod_doc("p", neuron=1))
    with extender(kubeconfig) as http:
        status, out = http.post("/bind", doc)
        assert status == 200 and words in out["Error"]
        assert fake.bindings == []
        assert http.get("/healthz")[0] == 200


def _burst(http: Http, pods: list[str], nodes: list[str]) -> list[str]:
    async def bind(session: aiohttp.ClientSession, name: str, node: str) -> str:
        doc = {"PodName": name, "PodNamespace": "default", "PodUID": f"uid-default-{name}", "Node": node}
        async with session.post(http.base + "/bind", json=doc) as response:
            assert response.status == 200
            return str((await response.json())["Error"])

    async def run() -> list[str]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(bind(session, p, nodes[i % len(nodes)]) for i, p in enumerate(pods)))

    return asyncio.run(run())


def test_burst_of_binds_for_the_one_last_block(api: tuple[FakeApiServer, Path]) -> None:
    """Twelve pods passed filter for the same last 4-device block and are bound at once: exactly one wins."""
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.24xlarge", used_devices=range(4, 16))))
    names = [f"p{i}" for i in range(12)]
    for name in names:
        fake.put("pods", pod_doc(name, neuron=4))
    fake.bind_delay = 0.02  # widen the window between check and bind
    with extender(kubeconfig) as http:
        assert all(passed(http, pod_doc(n, neuron=4), ["a"]) == ["a"] for n in names)
        errors = _burst(http, names, ["a"])
    assert errors.count("") == 1
    assert all("no longer fits node a" in e for e in errors if e)
    assert len(fake.bindings) == 1


def test_burst_over_two_nodes_places_one_pod_on_each(api: tuple[FakeApiServer, Path]) -> None:
    fake, kubeconfig = api
    for node in ("a", "b"):
        fake.put("nodes", node_doc(node, node_state("trn1.32xlarge", used_devices=range(8))))  # 8-15 free
    names = [f"q{i}" for i in range(10)]
    for name in names:
        fake.put("pods", pod_doc(name, neuron=8))
    with extender(kubeconfig) as http:
        errors = _burst(http, names, ["a", "b"])
    assert errors.count("") == 2
    assert sorted(node for _, node in fake.bindings) == ["a", "b"]


def test_two_replicas_answer_the_same(api: tuple[FakeApiServer, Path]) -> None:
    """Stateless replicas: a second replica (or a restarted one) rebuilds the same view from the API server."""
    fake, kubeconfig = api
    for i, used in enumerate([[], [0], [1, 2], [0, 1, 2, 3]]):
        fake.put("nodes", node_doc(f"n{i}", node_state("inf1.6xlarge", used_devices=used)))
    fake.put("pods", pod_doc("bound", neuron=1, node_name="n0", phase="Running"))
    pod = pod_doc("p", neuron=2)
    names = [f"n{i}" for i in range(4)]
    with extender(kubeconfig) as one:
        eventually(lambda: passed(one, pod, names) == ["n0", "n1"], "bound pod seen")
        answers = [one.post(verb, names_args(pod, names)) for verb in ("/filter", "/prioritize")]
    with extender(kubeconfig) as two:
        eventually(lambda: passed(two, pod, names) == ["n0", "n1"], "bound pod seen")
        assert [two.post(verb, names_args(pod, names)) for verb in ("/filter", "/prioritize")] == answers


def _poisoned_nodes() -> dict[str, Any]:
    good = encode_node_state(node_state("inf1.6xlarge"))
    return {
        "huge-devices": node_doc("huge-devices", annotations={**good, "neuron-contig.io/devices": "9" * 5000}),
        "huge-free": node_doc("huge-free", annotations={**good, "neuron-contig.io/free-devices": "1" * 5000}),
        "annotations-list": {"metadata": {"name": "annotations-list", "annotations": ["x"]}},
        "metadata-list": {"metadata": ["x"]},
        "array": [1, 2, 3],
        "long-name": {"metadata": {"name": "n" * 5000}},
    }


def _poisoned_pods() -> dict[str, Any]:
    huge = pod_doc("huge", containers=[{"name": "c", "resources": {"limits": {"aws.amazon.com/neuron": "9" * 5000}}}])
    huge["spec"]["nodeName"] = "good"
    return {
        "default/huge": huge,
        "default/containers-text": {
            "metadata": {"name": "containers-text"},
            "spec": {"containers": "x", "nodeName": "good"},
        },
        "default/number": 7,
        "default/metadata-text": {"metadata": "x", "spec": {"nodeName": "good"}},
    }


def test_one_poisoned_object_never_stops_the_list_or_the_watch(
    api: tuple[FakeApiServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """One malformed Node or Pod among good ones, in the first list and later in the watch: the extender becomes
    ready, judges the good nodes, and keeps following the watch."""
    caplog.set_level(logging.INFO)
    fake, kubeconfig = api
    fake.put("nodes", node_doc("good", node_state("inf1.6xlarge")))
    fake.put("nodes", node_doc("other", node_state("inf1.6xlarge")))
    for key, doc in _poisoned_nodes().items():
        fake.put_raw("nodes", key, doc)
    for key, doc in _poisoned_pods().items():
        fake.put_raw("pods", key, doc)
    fake.put("pods", pod_doc("held", neuron=2, node_name="other", phase="Running"))
    with extender(kubeconfig) as http:
        pod = pod_doc("p", neuron=3)
        assert passed(http, pod, ["good", "other", "huge-devices", "huge-free"]) == ["good"]
        # The same poison again, now as watch events (ADDED, MODIFIED, DELETED), then a good change.
        for kind, poison in (("nodes", _poisoned_nodes()), ("pods", _poisoned_pods())):
            for key, doc in poison.items():
                fake.put_raw(kind, key, doc, "MODIFIED")
                fake.put_raw(kind, key, doc, "DELETED")
        fake.put("pods", pod_doc("late", neuron=2, node_name="good", phase="Running"))
        eventually(lambda: passed(http, pod, ["good", "other"]) == [], "the good pod after the poisoned events")
        fake.put("nodes", node_doc("fresh", node_state("inf1.6xlarge")))
        eventually(lambda: passed(http, pod, ["fresh"]) == ["fresh"], "the good node after the poisoned events")
        assert http.get("/readyz")[0] == 200
    events = [r.getMessage() for r in caplog.records]
    # Each kind listed once: no poisoned event made a watch fail and list again.
    assert events.count("cache.listed") == 2 and "cache.watch_failed" not in events, events
    # And the poison is logged, not once per object and event.
    assert 1 <= events.count("cache.object_rejected") <= 4, events


def test_relist_interrupts_an_idle_watch_at_once_and_never_blocks_the_caller(api: tuple[FakeApiServer, Path]) -> None:
    """A new binder re-reads the pods through its reflector: asking must not wait for the open watch (300 s by
    default) to end, nor block the event loop that asks."""
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.6xlarge")))
    view = Verdicts(ClusterStore())
    loop = asyncio.new_event_loop()
    reflector = Reflector(
        KubeApi(str(kubeconfig)), "pods",
        lambda e: loop.call_soon_threadsafe(view.store.apply, e.kind, e.type, e.objects),
        watch_timeout=300,
    )  # fmt: skip
    reflector.start()
    try:
        eventually(
            lambda: (loop.run_until_complete(asyncio.sleep(0.01)), view.store.lists_applied("pods"))[1] == 1, "list"
        )
        time.sleep(0.5)  # the watch is open and idle now
        started = time.monotonic()
        reflector.relist()
        assert time.monotonic() - started < 0.5, "relist() blocked its caller"
        eventually(lambda: (loop.run_until_complete(asyncio.sleep(0.01)), view.store.lists_applied("pods"))[1] == 2,
                   "the second list", limit=3)  # fmt: skip
        started = time.monotonic()
        reflector.stop()
        reflector.join(5)
        assert not reflector.is_alive() and time.monotonic() - started < 1
    finally:
        reflector.stop()
        loop.close()


def test_the_pending_count_forgets_a_pod_deleted_while_it_waits(api: tuple[FakeApiServer, Path]) -> None:
    """neuron_contig_extender_pods_unschedulable counted a pod deleted while Pending until the replica restarted:
    the bound-pod watch never sees such a pod. The pending-pod watch (main's wiring) forgets it, and a relist
    forgets what was deleted while no watch was open."""
    fake, kubeconfig = api
    for name in ("waits", "gone", "gone-while-down"):
        fake.put("pods", pod_doc(name, neuron=16))
    fake.put("pods", {**pod_doc("other-scheduler", neuron=16), "spec": {"schedulerName": "default-scheduler"}})
    metrics = ExtenderMetrics()
    for name in ("waits", "gone", "gone-while-down"):
        metrics.pod_schedulable(f"default/{name}", {"neuron"}, False)

    def counted() -> float:
        value = metrics.registry.get_sample_value("neuron_contig_extender_pods_unschedulable", {"resource": "neuron"})
        return value if value is not None else -1.0

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    reflector = pending_reflector(KubeApi(str(kubeconfig)), metrics, loop, watch_timeout=1)
    try:
        reflector.start()
        time.sleep(0.5)
        assert counted() == 3
        fake.delete("pods", "default/gone")
        eventually(lambda: counted() == 2, "the deleted pod forgotten")
        fake.delete("pods", "default/gone-while-down")
        fake.compact()  # the watch must relist: the full list forgets what is not in it
        eventually(lambda: counted() == 1, "the pod deleted before a relist forgotten")
    finally:
        reflector.stop()
        reflector.join(10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
