"""The PromQL an operator types, as docs/monitoring.md shows it (a test keeps them equal, and the
cluster tier runs each against the live cluster). Plain data: tests/deploy imports it too."""

from __future__ import annotations

import re

# Per-pod utilization: neuron-monitor labels its per-core series `neuroncore` and the info series uses the same
# name, so one `on (node, neuroncore)` joins them; `node` comes from each scrape's relabeling.
UTILIZATION_BY_POD = (
    "avg by (namespace, pod) (\n"
    "  neuroncore_utilization_ratio\n"
    "  * on (node, neuroncore) group_left (namespace, pod, container)\n"
    "  neuron_contig_plugin_pod_neuroncore_info\n"
    ")"
)

# (what it answers, PromQL), in docs/monitoring.md's order.
OPERATOR_QUERIES = (
    ("Free devices per node", 'sum by (node) (neuron_contig_plugin_devices{state="free"})'),
    ("Largest free block per node: the biggest device request each node can take now",
     'max by (node) (neuron_contig_plugin_largest_free_block{resource="neuron"})'),
    ("Nodes that can take a 4-device pod now",
     'max by (node) (neuron_contig_plugin_largest_free_block{resource="neuron"}) >= 4'),
    ("Fragmentation per node: 0 = every free device in one block",
     '1 - max by (node) (neuron_contig_plugin_largest_free_block{resource="neuron"})\n'
     '  / (max by (node) (neuron_contig_plugin_devices{state="free"}) > 0)'),
    ("Pods waiting for a block no node has", "sum by (resource) (neuron_contig_extender_pods_unschedulable)"),
    ("NeuronCores each pod holds", "count by (node, namespace, pod) (neuron_contig_plugin_pod_neuroncore_info)"),
    ("Per-pod NeuronCore utilization: neuron-monitor's per-core series joined on (node, neuroncore)",
     UTILIZATION_BY_POD),
)  # fmt: skip


def one_line(expr: str) -> str:
    """The expression on one line, as promtool and the dashboard JSON take it."""
    return re.sub(r"\s+\)", ")", re.sub(r"\(\s+", "(", " ".join(expr.split())))
