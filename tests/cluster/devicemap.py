"""The demo's per-node device map: `kubectl neuron -o wide`'s table, drawn by kubectl_neuron itself from the
node objects (the plugin's annotations and its NeuronDevicesHealthy condition), so the demo teaches the one
picture operators see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubectl_neuron.render import render_table
from kubectl_neuron.view import build_view

if TYPE_CHECKING:
    from tests.cluster.harness import Cluster
    from tests.cluster.workload import Pool


def render_cluster(
    nodes: Sequence[Mapping[str, Any]],
    now: datetime,
    pending: Sequence[Mapping[str, Any]] = (),
    events: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Every node's map, the pod behind each letter, the legend, why devices are withdrawn, and the Pending
    pods with the scheduler's latest word on each."""
    return render_table(build_view(nodes, pending, events, now), wide=True)


def render_pool(cluster: Cluster, pool: Pool) -> str:
    """`render_cluster` of a pool's nodes, Pending pods and FailedScheduling events, read from the API server."""
    as_dict = cluster.api.sanitize_for_serialization
    core = pool.core
    nodes = [as_dict(core.read_node(name)) for name in pool.nodes]
    pending = as_dict(core.list_namespaced_pod(pool.namespace, field_selector="status.phase=Pending").items)
    events = as_dict(core.list_namespaced_event(pool.namespace, field_selector="reason=FailedScheduling").items)
    return render_cluster(nodes, datetime.now(UTC), pending, events)
