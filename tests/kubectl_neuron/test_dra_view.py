"""`kubectl neuron` on DRA nodes: the view rebuilt from the driver's own slices and the claims allocated from
them, with the same map, free sets and largest free blocks as for device-plugin nodes; garbled input is an error
for that node, never a guess."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kubectl_neuron.render import node_json, render_table
from kubectl_neuron.view import build_view
from neuronalloc import resolve_topology
from neuronalloc.draslices import DRIVER, slice_specs

NOW = datetime(2026, 11, 28, tzinfo=UTC)
TRN1 = resolve_topology("trn1.32xlarge", 16)


def node(name: str, instance_type: str = "trn1.32xlarge") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"node.kubernetes.io/instance-type": instance_type}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def slices(name: str, unhealthy: set[int] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    return [
        {"metadata": {"name": s.name}, "spec": {**s.spec, "pool": {**s.spec["pool"], "generation": 3}}}
        for s in slice_specs(TRN1, name, unhealthy)
    ]


def claim(namespace: str, name: str, node_name: str, devices: list[str], pod: str | None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "allocation": {
            "devices": {
                "results": [{"driver": DRIVER, "pool": node_name, "device": d, "request": "b"} for d in devices]
            }
        }
    }
    if pod:
        status["reservedFor"] = [{"resource": "pods", "name": pod, "uid": "x"}]
    return {"metadata": {"namespace": namespace, "name": name}, "status": status}


def test_a_dra_node_shows_its_blocks_holders_and_health() -> None:
    claims = [
        claim("ns", "a-claim", "n1", ["dev-0-3"], "a"),
        claim("ns", "b-claim", "n1", ["core-30-30", "core-31-31"], None),
        claim("ns", "elsewhere", "n2", ["dev-0-15"], "z"),
        {"metadata": {"namespace": "ns", "name": "pending"}},
    ]
    view = build_view([node("n1")], [], [], NOW, resource_slices=slices("n1", {8}), resource_claims=claims)
    (shown,) = view.nodes
    assert shown.mode == "dra" and shown.error is None
    assert shown.unhealthy_devices == {8}
    assert shown.free_devices == frozenset(range(4, 15)) - {8}
    assert shown.largest_free_devices == 4  # 4-7 and 12-15 are whole aligned blocks of 4; 8 is unhealthy
    assert shown.pods == ("ns/a", "ns/claim:b-claim")
    doc = node_json(shown)
    assert doc["mode"] == "dra" and "DRA" in doc["status"]
    assert doc["map"] == "AAAA .... X... ...b"
    assert "DRA" in render_table(view)


def test_garbled_dra_state_is_an_error_for_that_node() -> None:
    broken = slices("n1")
    broken[1]["spec"]["devices"][0]["attributes"]["nodeDevices"] = {"int": 10_000}
    (shown,) = build_view([node("n1")], [], [], NOW, resource_slices=broken).nodes
    assert shown.error and "nodeDevices" in shown.error and shown.mode == "dra"
    claims = [claim("ns", "c", "n1", ["dev-1-2"], "p")]  # not a trn1 block
    (shown,) = build_view([node("n1")], [], [], NOW, resource_slices=slices("n1"), resource_claims=claims).nodes
    assert shown.error and "dev-1-2" in shown.error
    json.dumps(node_json(shown))


def test_only_the_newest_generation_counts() -> None:
    old = [{**s, "spec": {**s["spec"], "pool": {**s["spec"]["pool"], "generation": 1}}} for s in slices("n1", {0})]
    (shown,) = build_view([node("n1")], [], [], NOW, resource_slices=old + slices("n1")).nodes
    assert shown.unhealthy_devices == frozenset()


def test_a_dra_nodes_health_row_names_the_drivers_taints_not_a_missing_plugin() -> None:
    view = build_view([node("n1")], [], [], NOW, resource_slices=slices("n1", {8}))
    health = render_table(view, wide=True).split("UNHEALTHY  CONDITION")[1]  # the health table
    assert "plugin not running" not in health
    assert "neuron.neuron-contig.io/unhealthy" in health
