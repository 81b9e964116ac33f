"""The binder's claims, in process: the view is fed by hand (no reflector), so each window between a Binding
POST and the watch is held open on purpose. The API server is tests/extender/fake_apiserver.py, over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from extender.bind import Binder, BindSettings
from extender.cache import BOUND, IN_FLIGHT, ClusterStore
from extender.kube import KubeApi
from extender.podcache import SeenPods
from extender.verdicts import Verdicts
from extender.wire import BindingArgs, parse_pod
from neuronalloc import Resource

from .builders import node_doc, node_state, pod_doc
from .fake_apiserver import FakeApiServer, fake_apiserver
from .test_fit import single


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeApiServer, KubeApi]]:
    with fake_apiserver(tmp_path) as (fake, kubeconfig):
        yield fake, KubeApi(str(kubeconfig))


def setup(fake: FakeApiServer, kube: KubeApi, **settings: float) -> tuple[Verdicts, Binder]:
    view = Verdicts(ClusterStore())
    docs = [node_doc(n, node_state("inf1.24xlarge", used_devices=range(4, 16))) for n in ("a", "b")]
    view.store.apply("nodes", "SYNC", tuple(docs))
    view.store.apply("pods", "SYNC", ())
    seen = SeenPods()
    for name in ("p", "q"):
        fake.put("pods", pod_doc(name, neuron=4))
        seen.add(parse_pod(pod_doc(name, neuron=4)))
    return view, Binder(kube, view, seen, settings=BindSettings(**settings))


def args(name: str, node: str) -> BindingArgs:
    return BindingArgs(name, "default", f"uid-default-{name}", node)


def test_a_claim_counts_while_its_post_is_in_flight(api: tuple[FakeApiServer, KubeApi]) -> None:
    fake, kube = api
    view, binder = setup(fake, kube)
    fake.bind_delay = 1.0
    four = single(Resource.NEURON, 4)

    async def scenario() -> None:
        task = binder.start(args("p", "a"), asyncio.get_running_loop().time() + 4.5)
        await asyncio.sleep(0.3)
        assert view.store.claim_of("default/p") == ("a", IN_FLIGHT)
        assert view.verdict("a", four).kind == "no_block"  # filter no longer offers the block
        assert (await task).ok
        assert view.store.claim_of("default/p") == ("a", BOUND)

    asyncio.run(scenario())


def test_an_unknown_outcome_counts_until_a_later_read_shows_no_binding(api: tuple[FakeApiServer, KubeApi]) -> None:
    fake, kube = api
    view, binder = setup(fake, kube, resolve_after=0.5)
    fake.bind_delay = 3.0  # past the POST's deadline: the API server answers 504 and makes no binding

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        outcome = await binder.start(args("p", "a"), loop.time() + 1.5)
        assert outcome.reason == "outcome_unknown"
        fake.bind_delay = 0
        refused = await binder.start(args("q", "a"), loop.time() + 4.5)
        assert refused.reason == "no_block"  # the unknown binding still holds the block
        await asyncio.sleep(1.0)  # the GET after resolve_after finds p unbound: the claim goes
        assert view.store.claim_of("default/p") is None
        assert (await binder.start(args("q", "a"), loop.time() + 4.5)).ok

    asyncio.run(scenario())
    assert fake.bindings == [("default/q", "a")]


def test_a_pod_found_bound_elsewhere_counts_where_it_is(api: tuple[FakeApiServer, KubeApi]) -> None:
    """The POST says the pod is already on node b (an earlier attempt landed there), before the watch shows
    it: the claim moves to b, so b's block is not offered again in that window."""
    fake, kube = api
    view, binder = setup(fake, kube)
    fake.put("pods", pod_doc("p", neuron=4, node_name="b"))

    async def scenario() -> None:
        outcome = await binder.start(args("p", "a"), asyncio.get_running_loop().time() + 4.5)
        assert outcome.reason == "already_bound" and "node b" in outcome.error
        assert view.store.claim_of("default/p") == ("b", BOUND)
        assert view.verdict("b", single(Resource.NEURON, 4)).kind == "no_block"
        assert view.verdict("a", single(Resource.NEURON, 4)).fits

    asyncio.run(scenario())
