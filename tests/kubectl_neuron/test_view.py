"""Properties of the node view and its device map, over random node states the plugin could publish."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubectl_neuron.render import FREE_GLYPH, SHARED_GLYPH, UNHEALTHY_GLYPH, device_map, node_json
from kubectl_neuron.view import DeviceStatus, build_node, build_pending, neuron_requests
from neuronalloc import CATALOG, PodHolding, Resource, decode_ranges, largest_free_block, resolve_topology
from neuronalloc.requests import RequestError
from tests.kubectl_neuron.recorded import node, state_annotations

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


@st.composite
def node_states(draw: st.DrawFn) -> tuple[str, dict[str, PodHolding], frozenset[int]]:
    instance_type = draw(st.sampled_from(sorted(CATALOG)))
    row = CATALOG[instance_type]
    devices = list(range(row.devices))
    owner = draw(
        st.lists(st.sampled_from(["whole", "cores", "unhealthy", "free"]), min_size=row.devices, max_size=row.devices)
    )
    pods: dict[str, PodHolding] = {}
    unhealthy = set()
    for device, kind in zip(devices, owner, strict=True):
        if kind == "whole":
            holder = f"ns/whole-{draw(st.integers(0, 3))}"
            pods[holder] = PodHolding(devices=pods.get(holder, PodHolding()).devices | {device})
        elif kind == "cores":
            cores = resolve_topology(instance_type, row.devices).cores_of_device(device)
            picked = draw(st.sets(st.sampled_from(list(cores)), min_size=1))
            pods[f"ns/cores-{device}"] = PodHolding(cores=frozenset(picked))
        elif kind == "unhealthy":
            unhealthy.add(device)
    return instance_type, pods, frozenset(unhealthy)


@settings(max_examples=150, deadline=None)
@given(node_states())
def test_device_map_agrees_with_the_annotations(case: tuple[str, dict[str, PodHolding], frozenset[int]]) -> None:
    instance_type, pods, unhealthy = case
    annotations = state_annotations(instance_type, pods, unhealthy, observed_at=NOW - timedelta(seconds=5))
    view = build_node(node("n", instance_type, annotations), NOW)
    assert view.error is None
    glyphs = device_map(view).replace(" ", "")
    assert len(glyphs) == CATALOG[instance_type].devices
    free = decode_ranges(annotations["neuron-contig.io/free-devices"])
    assert {i for i, g in enumerate(glyphs) if g == FREE_GLYPH} == free
    assert {i for i, g in enumerate(glyphs) if g == UNHEALTHY_GLYPH} == unhealthy
    for cell in view.devices:
        if cell.status is DeviceStatus.WHOLE:
            assert glyphs[cell.device].isupper()
        elif cell.status is DeviceStatus.CORES:
            assert glyphs[cell.device].islower() or glyphs[cell.device] == SHARED_GLYPH
    topo = resolve_topology(instance_type, CATALOG[instance_type].devices)
    assert view.largest_free_devices == largest_free_block(topo, Resource.NEURON, free)
    doc = node_json(view)
    assert decode_ranges(doc["freeDevices"]) == free
    assert [c["state"] for c in doc["deviceMap"]] == [c.status.value for c in view.devices]
    assert view.age_seconds == 5.0 and not view.stale


def test_requests_take_the_larger_of_app_sum_and_init_max() -> None:
    def container(limits: dict[str, str]) -> dict[str, object]:
        return {"name": "c", "resources": {"limits": limits}}

    pod = {
        "spec": {
            "containers": [container({"aws.amazon.com/neuron": "2"}), container({"aws.amazon.com/neuron": "1"})],
            "initContainers": [
                container({"aws.amazon.com/neuron": "4"}),
                container({"aws.amazon.com/neuroncore": "2"}),
            ],
        }
    }
    assert neuron_requests(pod) == {"neuron": 4, "neuroncore": 2}
    assert neuron_requests({"spec": {"containers": [container({"cpu": "1"})]}}) == {}
    requests_only = {"spec": {"containers": [{"resources": {"requests": {"aws.amazon.com/neuroncore": "3"}}}]}}
    assert neuron_requests(requests_only) == {"neuroncore": 3}


def test_a_sidecar_keeps_its_devices_for_the_pods_life() -> None:
    # A 2-device sidecar (restartable init container) and a 4-device app run together: the pod holds 6, as the
    # extender places it, not max(4, 2).
    pod = {
        "spec": {
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"limits": {"aws.amazon.com/neuron": "2"}}},
                {"name": "setup", "resources": {"limits": {"aws.amazon.com/neuron": "7"}}},
            ],
            "containers": [{"name": "app", "resources": {"limits": {"aws.amazon.com/neuron": "4"}}}],
        }
    }
    assert neuron_requests(pod) == {"neuron": 7 + 2}  # the regular init runs beside the sidecar before it
    pod["spec"]["initContainers"][1]["resources"]["limits"]["aws.amazon.com/neuron"] = "3"  # type: ignore[index]
    assert neuron_requests(pod) == {"neuron": 6}


def test_a_malformed_quantity_is_an_error_not_zero() -> None:
    pod = {"spec": {"containers": [{"name": "app", "resources": {"limits": {"aws.amazon.com/neuron": "1.5"}}}]}}
    with pytest.raises(RequestError, match="not a whole number"):
        neuron_requests(pod)
    shown = build_pending({**pod, "metadata": {"namespace": "ml", "name": "bad"}}, None)
    assert shown is not None
    assert shown.reason == "InvalidRequest"
    assert "1.5" in shown.message and not shown.requests


def test_a_neurondevice_pod_is_listed_and_told_why_it_may_wait() -> None:
    from kubectl_neuron.render import render_table
    from kubectl_neuron.view import build_view, is_neuron_node
    from tests.kubectl_neuron.recorded import pod

    nodes = [node("trn-a", "trn1.32xlarge", state_annotations("trn1.32xlarge", {}))]
    old_spec = pod("ml", "old-spec", {"aws.amazon.com/neurondevice": "4"}, condition=("Unschedulable", "0/1 nodes"))
    mixed = pod("ml", "mixed", {"aws.amazon.com/neurondevice": "4", "aws.amazon.com/neuron": "4"})
    view = build_view(nodes, [old_spec, mixed], [], NOW)
    by_key = {p.key: p for p in view.pending}
    assert by_key["ml/old-spec"].requests == {"neurondevice": 4}
    (warning,) = by_key["ml/old-spec"].warnings
    assert warning.startswith("no node advertises aws.amazon.com/neurondevice") and "--disable-neurondevice" in warning
    assert "asks for whole devices under two names (neuron and neurondevice)" in by_key["ml/mixed"].warnings[0]
    assert not any("NeuronCores" in w for w in by_key["ml/mixed"].warnings)
    assert "neurondevice=4" in render_table(view)
    # A node that advertises the alias: no warning; a node advertising only the alias is a Neuron node.
    served = dict(nodes[0])
    served["status"] = {
        **nodes[0]["status"],
        "capacity": {**nodes[0]["status"]["capacity"], "aws.amazon.com/neurondevice": "16"},
    }
    assert build_view([served], [old_spec], [], NOW).pending[0].warnings == ()
    assert is_neuron_node({"metadata": {}, "status": {"capacity": {"aws.amazon.com/neurondevice": "1"}}})
