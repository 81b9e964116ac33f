"""The demo's per-node device map: `kubectl neuron -o wide`'s table, drawn by kubectl_neuron itself from the
node objects (the plugin's annotations and its NeuronDevicesHealthy condition), so the demo teaches the one
picture operators see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from kubectl_neuron.render import render_table
from kubectl_neuron.view import build_view


def render_cluster(
    nodes: Sequence[Mapping[str, Any]],
    now: datetime,
    pending: Sequence[Mapping[str, Any]] = (),
    events: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Every node's map, the pod behind each letter, the legend, why devices are withdrawn, and the Pending
    pods with the scheduler's latest word on each."""
    return render_table(build_view(nodes, pending, events, now), wide=True)
