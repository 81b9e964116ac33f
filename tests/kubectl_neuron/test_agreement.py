"""`kubectl neuron` and the extender agree on the recorded cluster: on what each pod needs (sidecars and init
containers included) and on each node's largest free block. The extender is the real `neuron-scheduler-extender`
process in --standalone mode, asked over HTTP with the very node and pod objects kubectl neuron reads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from kubectl_neuron.view import build_view, neuron_requests
from neuronalloc import CATALOG, PodHolding, Resource
from tests.extender.process import extender
from tests.extender.serving import Http
from tests.kubectl_neuron.recorded import node, now, pod, recorded_cluster, state_annotations

Obj = dict[str, Any]
PROBE_TYPE = "inf1.24xlarge"  # 16 devices of 4 cores in a chain: any run of k free units holds a block of k


@pytest.fixture(scope="module")
def http() -> Iterator[Http]:
    with extender("--standalone", "--port", "0") as running:
        yield Http(f"http://127.0.0.1:{running.event('extender.listening')['port']}")


def passing(http: Http, pod_doc: Obj, nodes: list[Obj]) -> set[str]:
    status, out = http.post("/filter", {"Pod": pod_doc, "Nodes": {"items": nodes}})
    assert status == 200 and not out.get("Error"), out
    return {n["metadata"]["name"] for n in (out.get("Nodes") or {}).get("items") or []}


def probe_nodes(resource: Resource) -> list[Obj]:
    """Nodes of PROBE_TYPE whose only free `resource` units are the first k, for every k."""
    row = CATALOG[PROBE_TYPE]
    units = row.devices if resource is Resource.NEURON else row.devices * row.cores_per_device
    nodes = []
    for k in range(units + 1):
        held = frozenset(range(k, units))
        holding = PodHolding(devices=held) if resource is Resource.NEURON else PodHolding(cores=held)
        pods = {"other/rest": holding} if held else {}
        nodes.append(node(f"k{k}", PROBE_TYPE, state_annotations(PROBE_TYPE, pods, observed_at=now())))
    return nodes


def test_they_agree_on_what_each_pod_needs(http: Http) -> None:
    _, pods, _ = recorded_cluster()
    compared = {Resource.NEURON: 0, Resource.NEURONCORE: 0}
    for target in pods:
        wants = neuron_requests(target)  # what kubectl neuron shows in WANTS
        name = target["metadata"]["name"]
        if not wants:  # asks for nothing: the extender passes it even where nothing is free
            assert {"k0"} <= passing(http, target, probe_nodes(Resource.NEURON)), name
            continue
        for resource in Resource:
            if resource.short not in wants:
                continue
            passed = passing(http, target, probe_nodes(resource))
            # The fewest free units the extender places the pod in, container by container, as kubelet will.
            needed = min((int(n[1:]) for n in passed), default=None)
            assert needed == wants[resource.short], (name, resource.short)
            compared[resource] += 1
    assert compared == {Resource.NEURON: 4, Resource.NEURONCORE: 1}  # the sidecar pod among them


def test_they_agree_on_each_nodes_largest_free_block(http: Http) -> None:
    nodes, _, _ = recorded_cluster()
    view = {n.name: n for n in build_view(nodes, (), (), now() + timedelta(seconds=1)).nodes}
    neuron_nodes = [n for n in nodes if n["metadata"]["name"] in view]
    largest: dict[Resource, dict[str, int]] = {r: dict.fromkeys(view, 0) for r in Resource}
    for resource in Resource:
        most = max(
            n.device_count * (n.cores_per_device if resource is Resource.NEURONCORE else 1) for n in view.values()
        )
        for size in range(1, most + 1):
            probe = pod("ml", f"probe-{size}", {resource.value: str(size)})
            for name in passing(http, probe, neuron_nodes):
                largest[resource][name] = max(largest[resource][name], size)
    for name, shown in view.items():
        if shown.error:  # no state, or garbled: kubectl says why, and the extender passes no pod there
            assert largest[Resource.NEURON][name] == largest[Resource.NEURONCORE][name] == 0, name
            continue
        assert largest[Resource.NEURON][name] == shown.largest_free_devices, name
        assert largest[Resource.NEURONCORE][name] == shown.largest_free_cores, name
