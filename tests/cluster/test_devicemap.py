"""The demo's device map (pure rendering; needs no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime

from neuronalloc import NodeState, PodHolding, resolve_topology
from tests.cluster.devicemap import render_node


def test_map_shows_whole_devices_cores_free_and_unhealthy() -> None:
    topo = resolve_topology("inf1.6xlarge", 4)
    state = NodeState(
        topology=topo,
        free_devices=frozenset(),
        free_cores=frozenset({10, 11}),
        unhealthy_devices=frozenset({3}),
        pods={"ns/train": PodHolding(devices=frozenset({0, 1})), "ns/infer": PodHolding(cores=frozenset({8, 9}))},
        observed_at=datetime(2026, 11, 22, tzinfo=UTC),
    )
    text = render_node("n1", state)
    rows = text.splitlines()
    assert rows[1].split() == ["device", "0", "1", "2", "3"]
    assert rows[2].split() == ["A", "A", "b", "!"]
    assert "A  ns/train: devices 0-1" in text
    assert "b  ns/infer: cores 8-9" in text
    assert "unhealthy devices 3" in text
    assert "free devices none; free cores 10-11" in text
