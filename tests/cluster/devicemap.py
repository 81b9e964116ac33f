"""The demo's per-node device map: `kubectl neuron -o wide`'s table, drawn by kubectl_neuron itself from the
node objects (the plugin's annotations and its NeuronDevicesHealthy condition) or, on DRA nodes, from our
driver's ResourceSlices and the ResourceClaims, so the demo teaches the one picture operators see in either
mode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubernetes.client import CustomObjectsApi

from kubectl_neuron.render import render_table
from kubectl_neuron.view import build_view
from neuronalloc.draslices import DRIVER

if TYPE_CHECKING:
    from tests.cluster.harness import Cluster
    from tests.cluster.workload import Pool


def render_cluster(
    nodes: Sequence[Mapping[str, Any]],
    now: datetime,
    pending: Sequence[Mapping[str, Any]] = (),
    events: Sequence[Mapping[str, Any]] = (),
    resource_slices: Sequence[Mapping[str, Any]] = (),
    resource_claims: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Every node's map, the pod behind each letter, the legend, why devices are withdrawn, and the Pending
    pods with the scheduler's latest word on each."""
    view = build_view(nodes, pending, events, now, resource_slices=resource_slices, resource_claims=resource_claims)
    return render_table(view, wide=True)


def render_pool(cluster: Cluster, pool: Pool) -> str:
    """`render_cluster` of a pool's nodes, Pending pods and FailedScheduling events, read from the API server."""
    as_dict = cluster.api.sanitize_for_serialization
    core = pool.core
    nodes = [as_dict(core.read_node(name)) for name in pool.nodes]
    pending = as_dict(core.list_namespaced_pod(pool.namespace, field_selector="status.phase=Pending").items)
    events = as_dict(core.list_namespaced_event(pool.namespace, field_selector="reason=FailedScheduling").items)
    slices: list[Any] = []
    claims: list[Any] = []
    if any(node.is_dra for node in pool.nodes.values()):
        # Raw JSON, as kubectl neuron reads them: the typed client may not know every field of resource.k8s.io/v1.
        custom = CustomObjectsApi(cluster.api)
        group = ("resource.k8s.io", "v1")
        selector = f"spec.driver={DRIVER}"
        slices = custom.list_cluster_custom_object(*group, "resourceslices", field_selector=selector)["items"]
        claims = custom.list_namespaced_custom_object(*group, pool.namespace, "resourceclaims")["items"]
    return render_cluster(nodes, datetime.now(UTC), pending, events, slices, claims)
