"""`aws.amazon.com/neurondevice` in the extender: parsed, judged and placed exactly as `aws.amazon.com/neuron`
(the same devices), and counted in one accounting with the other two names, so pods bound but not yet published
never over-commit a node whatever names they use."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.cache import ClusterStore
from extender.fit import PendingPod, judge_node
from extender.metrics import ExtenderMetrics
from extender.server import ServerSettings, build_app
from extender.verdicts import Verdicts
from neuronalloc import Resource
from neuronalloc.requests import ContainerSpec, Need, RequestError, pod_request

from .builders import node_doc, node_state, nodes_args, pod_doc
from .fake_apiserver import FakeApiServer
from .serving import Http, served
from .test_bind import api, bind_doc, replica  # noqa: F401  (api is a fixture)
from .test_fit import Case, cases

NEURONDEVICE = Resource.NEURONDEVICE.value


def alias_pod(name: str, count: int, **fields: Any) -> dict[str, Any]:
    doc = pod_doc(name, **fields)
    limits = {"cpu": "1", NEURONDEVICE: str(count)}
    doc["spec"]["containers"][0]["resources"] = {"limits": limits, "requests": dict(limits)}
    return doc


def test_a_neurondevice_quantity_is_a_need_for_whole_devices() -> None:
    request = pod_request((ContainerSpec("train", {NEURONDEVICE: "4"}, {}),), ())
    assert request.needs == (Need("train", Resource.NEURONDEVICE, 4),)
    assert request.total(Resource.NEURONDEVICE) == 4 and not request.empty
    with pytest.raises(
        RequestError, match=re.escape("aws.amazon.com/neurondevice quantity '1.5' is not a whole number of devices")
    ):
        pod_request((ContainerSpec("train", {NEURONDEVICE: "1.5"}, {}),), ())


@settings(max_examples=300, deadline=None)
@given(cases())
def test_a_neurondevice_pod_gets_the_verdict_of_the_same_neuron_pod(case: Case) -> None:
    if case.resource is Resource.NEURONCORE:
        return
    as_alias = judge_node(case.state, [], pod_request((ContainerSpec("c", {NEURONDEVICE: str(case.size)}, {}),), ()))
    as_neuron = judge_node(
        case.state, [], pod_request((ContainerSpec("c", {Resource.NEURON.value: str(case.size)}, {}),), ())
    )
    assert (as_alias.kind, as_alias.score, as_alias.reason) == (as_neuron.kind, as_neuron.score, as_neuron.reason)
    assert [ids for _, ids in as_alias.blocks] == [ids for _, ids in as_neuron.blocks]


def _pending(key: str, resource: Resource, size: int, created: str) -> PendingPod:
    return PendingPod(key, created, pod_request((ContainerSpec("c", {resource.value: str(size)}, {}),), ()))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Resource)), st.integers(1, 16)), max_size=8))
def test_pods_bound_under_the_three_names_never_overcommit_a_node(plan: list[tuple[Resource, int]]) -> None:
    """Filter admits pods one by one as the scheduler would, each onto the state left by those bound before it;
    the blocks they are predicted to get never share a device held whole, nor a core."""
    state = node_state("trn1.32xlarge", used_devices=[5], used_cores=[24])  # device 12 partly used
    bound: list[PendingPod] = []
    whole: list[int] = []
    cores: list[int] = []
    for index, (resource, size) in enumerate(plan):
        pod = _pending(f"ml/p{index}", resource, size, f"2026-11-28T11:00:{index:02d}Z")
        verdict = judge_node(state, bound, pod.request)
        if not verdict.fits:
            continue
        bound.append(pod)
        for name, block in verdict.blocks:
            (whole if name.whole_devices else cores).extend(block)
    topo = state.topology
    assert len(whole) == len(set(whole)) and len(cores) == len(set(cores))
    assert not set(whole) & (topo.devices_of_cores(cores) | {5, 12})
    assert 24 not in cores and not set(cores) & topo.cores_of_devices({5})


def test_a_pending_alias_pod_takes_its_devices_from_the_other_names() -> None:
    state = node_state("trn1.32xlarge", used_devices=range(8, 16))  # 0-7 free
    alias_eight = _pending("ml/old", Resource.NEURONDEVICE, 8, "2026-11-28T11:00:00Z")
    for resource, size in ((Resource.NEURON, 1), (Resource.NEURONDEVICE, 4), (Resource.NEURONCORE, 1)):
        verdict = judge_node(
            state, [alias_eight], pod_request((ContainerSpec("c", {resource.value: str(size)}, {}),), ())
        )
        assert verdict.kind == "no_block", (resource, verdict)


@pytest.fixture
def http_standalone() -> Iterator[Http]:
    settings = ServerSettings(max_body_bytes=256 * 1024, read_timeout=0.5, standalone=True)
    with served(lambda: build_app(settings, Verdicts(ClusterStore()), None, ExtenderMetrics())) as (base, _):
        yield Http(base)


def test_filter_over_http_treats_neurondevice_as_neuron(http_standalone: Http) -> None:
    nodes = [
        node_doc("trn", node_state("trn1.32xlarge", used_devices=[0])),
        node_doc("inf", node_state("inf2.48xlarge", used_devices=[0, 5])),
    ]
    status, out = http_standalone.post("/filter", nodes_args(alias_pod("old-spec", 4), nodes))
    assert status == 200 and out["Error"] == ""
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["trn", "inf"]
    status, out = http_standalone.post("/filter", nodes_args(alias_pod("old-spec", 3), nodes))
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["inf"]
    assert "multiple of its size" in out["FailedAndUnresolvableNodes"]["trn"]
    status, out = http_standalone.post("/prioritize", nodes_args(alias_pod("old-spec", 4), nodes))
    assert {entry["Host"] for entry in out} == {"trn", "inf"}
    text = http_standalone.get("/metrics")[1]
    assert 'neuron_contig_extender_pods_unschedulable{resource="neurondevice"}' in text


def test_bind_takes_a_pod_that_asks_only_for_neurondevice(api: tuple[FakeApiServer, Path]) -> None:  # noqa: F811
    """Before the alias, such a pod was refused at bind as asking for no Neuron resource."""
    fake, kubeconfig = api
    fake.put("nodes", node_doc("a", node_state("inf1.24xlarge", used_devices=range(4, 16))))
    fake.put("pods", alias_pod("old-spec", 4))
    fake.put("pods", alias_pod("too-big", 8))
    with replica(kubeconfig) as (_, http):
        assert http.post("/bind", bind_doc("old-spec", "a")) == (200, {"Error": ""})
        assert fake.bindings == [("default/old-spec", "a")]
        status, out = http.post("/bind", bind_doc("too-big", "a"))
        assert status == 200 and out["Error"] and "no Neuron resource" not in out["Error"]
        assert fake.bindings == [("default/old-spec", "a")]
