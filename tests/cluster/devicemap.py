"""A per-node text map of Neuron devices: free, held by which pod (whole or by cores), unhealthy.

It is drawn from the state the plugin published in its node annotations, so what it shows is what the
extender sees.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from neuronalloc import Resource, encode_ranges
from neuronalloc.nodestate import NodeState

FREE, UNHEALTHY = ".", "!"
LEGEND = f"legend: {FREE} free  {UNHEALTHY} unhealthy  A-Z device held whole by a pod  a-z cores of it held by a pod"


def render_node(node: str, state: NodeState) -> str:
    """One node: a header, a device row with one cell per device, then which pod each letter is."""
    topo = state.topology
    letters = _letters(state)
    cells = []
    for device in range(topo.device_count):
        cells.append(_cell(device, state, letters))
    header = (
        f"{node}  {topo.instance_type}  {topo.device_count} devices x {topo.cores_per_device} cores  "
        f"| {topo.describe_rule(Resource.NEURON)}"
    )
    index_row = " ".join(f"{d:>2}" for d in range(topo.device_count))
    cell_row = " ".join(f"{c:>2}" for c in cells)
    lines = [header, f"  device {index_row}", f"         {cell_row}"]
    for pod, letter in letters.items():
        holding = state.pods[pod]
        held = []
        if holding.devices:
            held.append(f"devices {encode_ranges(holding.devices)}")
        if holding.cores:
            held.append(f"cores {encode_ranges(holding.cores)}")
        lines.append(f"    {letter}  {pod}: {', '.join(held)}")
    if state.unhealthy_devices:
        lines.append(f"    {UNHEALTHY}  unhealthy devices {encode_ranges(state.unhealthy_devices)}")
    free_summary = encode_ranges(state.free_devices) or "none"
    lines.append(f"    free devices {free_summary}; free cores {encode_ranges(state.free_cores) or 'none'}")
    return "\n".join(lines)


def render_cluster(states: Mapping[str, NodeState]) -> str:
    return "\n\n".join([LEGEND, *(render_node(node, states[node]) for node in sorted(states))])


def _letters(state: NodeState) -> dict[str, str]:
    """A letter per pod, in device order: upper case for whole devices, lower case for cores."""

    def first_device(pod: str) -> int:
        holding = state.pods[pod]
        devices = holding.devices or state.topology.devices_of_cores(holding.cores)
        return min(devices, default=0)

    letters = {}
    for i, pod in enumerate(sorted(state.pods, key=lambda p: (first_device(p), p))):
        symbol = string.ascii_uppercase[i % 26]
        letters[pod] = symbol if state.pods[pod].devices else symbol.lower()
    return letters


def _cell(device: int, state: NodeState, letters: Mapping[str, str]) -> str:
    holders = [
        letters[pod]
        for pod, holding in state.pods.items()
        if device in holding.devices or device in state.topology.devices_of_cores(holding.cores)
    ]
    mark = "".join(sorted(holders))[:2] or FREE
    if device in state.unhealthy_devices:
        mark = UNHEALTHY if not holders else mark[:1] + UNHEALTHY
    return mark
