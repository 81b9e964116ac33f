"""The verdict memo under the request shapes a real cluster sends: requests answer from it once it is warm.

kube-scheduler sends filter, then prioritize, for one pod at a time; a cluster whose pods ask for 1-8 devices or
1-16 cores sends 24 shapes in turn. Each request's names that the memo lacks are judged inside the request, on
the scheduler's clock; the warmer judges what changed between requests. Counted here: how many verdicts are
computed inside requests (`Verdicts._judge` while a filter or prioritize is being answered), with the warmer
given time between requests as the event loop gives it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

from extender.cache import ClusterStore
from extender.verdicts import Verdicts
from extender.wire import parse_pod
from neuronalloc import CATALOG
from neuronalloc.requests import PodRequest

from .builders import container, node_doc, node_state, pod_doc

KINDS = ("inf1.6xlarge", "inf1.24xlarge", "inf2.48xlarge", "trn1.32xlarge")


def cluster(count: int, seed: int = 4) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        kind = rng.choice(KINDS)
        used = [d for d in range(CATALOG[kind].devices) if rng.random() < 0.4]
        docs.append(node_doc(f"node-{i:03d}", node_state(kind, used_devices=used)))
    return docs


def shapes() -> list[PodRequest]:
    """The issue's mix (1-8 devices, 1-16 cores: 24 shapes) and a few multi-container pods: 28 shapes."""
    docs = [pod_doc("p", neuron=n) for n in range(1, 9)] + [pod_doc("p", cores=n) for n in range(1, 17)]
    docs += [pod_doc("p", containers=[container("a", neuron=1), container("b", cores=c)]) for c in (1, 2, 4, 8)]
    return [parse_pod(d).request for d in docs]


class Counting:
    """Counts verdicts computed while `inside` is set (a request being answered)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside = False
        self.in_requests = 0
        original = Verdicts._judge

        def counted(view: Verdicts, *args: Any, **kwargs: Any) -> Any:
            if self.inside:
                self.in_requests += 1
            return original(view, *args, **kwargs)

        monkeypatch.setattr(Verdicts, "_judge", counted)

    def ask(self, view: Verdicts, names: list[str], request: PodRequest) -> None:
        """One pod's filter, then prioritize on the nodes that passed, as kube-scheduler sends them."""
        self.inside = True
        try:
            passed = view.filter_names(names, request).passed
            view.priority_names(passed, request)
        finally:
            self.inside = False


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counting]:
    yield Counting(monkeypatch)


async def settle(view: Verdicts) -> None:
    """Give the warmer the loop until it has nothing left to do (as the gaps between a scheduler's requests do)."""
    for _ in range(100_000):
        if not view.warm_backlog:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the warmer did not finish: {view.warm_backlog} left")


def test_a_warm_memo_answers_28_shapes_without_judging_inside_requests(counting: Counting) -> None:
    docs = cluster(120)
    names = [d["metadata"]["name"] for d in docs]
    requests = shapes()

    async def run() -> int:
        view = Verdicts(ClusterStore())
        view.store.apply("nodes", "SYNC", tuple(docs))
        view.store.apply("pods", "SYNC", ())
        warmer = asyncio.ensure_future(view.warm_forever())
        try:
            for request in requests:  # first sight of each shape: judged in the request, then warmed
                counting.ask(view, names, request)
                await settle(view)
            counting.in_requests = 0
            rng = random.Random(7)
            for round_ in range(3):
                for i, request in enumerate(requests):
                    # Between pods the cluster changes: a pod is bound somewhere, and the warmer catches up.
                    node = rng.choice(names)
                    view.store.apply("pods", "ADDED", (pod_doc(f"b{round_}-{i}", cores=1, node_name=node),))
                    await settle(view)
                    window = rng.sample(names, 60)  # the scheduler's window: a part of the cluster
                    counting.ask(view, window, request)
            return counting.in_requests
        finally:
            warmer.cancel()

    assert asyncio.run(run()) == 0


def test_more_shapes_than_the_memo_holds_keeps_most_of_them_warm(
    counting: Counting, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory is bounded (here: room for 10 shapes' entries), and a workload cycling through 14 shapes still
    finds most of them warm: no cliff where every shape pushes out the next one needed."""
    import extender.verdicts as cache

    docs = cluster(40)
    names = [d["metadata"]["name"] for d in docs]
    requests = shapes()[:14]
    monkeypatch.setattr(cache, "_MEMO_ENTRIES", 10 * 2 * len(docs), raising=False)
    monkeypatch.setattr(cache, "_MIN_SHAPES", 1, raising=False)
    monkeypatch.setattr(cache, "_RECENT_SHAPES", 10, raising=False)  # the same room in the old unit

    held: list[int] = []

    async def run() -> tuple[int, int]:
        view = Verdicts(ClusterStore())
        view.store.apply("nodes", "SYNC", tuple(docs))
        view.store.apply("pods", "SYNC", ())
        warmer = asyncio.ensure_future(view.warm_forever())
        cold = 0
        try:
            for round_ in range(6):
                for request in requests:
                    before = counting.in_requests
                    counting.ask(view, names, request)
                    await settle(view)
                    cold += round_ > 0 and counting.in_requests > before
                    held.append(view.memo_entries if hasattr(view, "memo_entries") else 0)
        finally:
            warmer.cancel()
        return cold, 5 * len(requests)

    cold, asked = asyncio.run(run())
    assert cold <= asked // 2, f"{cold} of {asked} requests found their shape cold"
    assert 0 < max(held) <= 10 * 2 * len(docs)
