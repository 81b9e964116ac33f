"""Builders for the objects extender tests need: node states, Node and Pod JSON, ExtenderArgs documents.

They build real Kubernetes JSON (camelCase objects inside PascalCase extender types), through the product's
own node-state codec, so a test exercises the same bytes the scheduler and the plugin produce.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from neuronalloc import NodeState, PodHolding, Topology, encode_node_state, free_sets, resolve_topology

OBSERVED = datetime(2026, 11, 22, 2, 5, 56, tzinfo=UTC)
NEURON = "aws.amazon.com/neuron"
NEURONCORE = "aws.amazon.com/neuroncore"


def topology(instance_type: str) -> Topology:
    from neuronalloc import CATALOG

    return resolve_topology(instance_type, CATALOG[instance_type].devices)


def node_state(
    instance_type: str,
    *,
    used_devices: Iterable[int] = (),
    used_cores: Iterable[int] = (),
    unhealthy: Iterable[int] = (),
    pods: Mapping[str, PodHolding] | None = None,
) -> NodeState:
    """A node state as the plugin would publish it, from what is in use (shared-hardware rule applied)."""
    topo = topology(instance_type)
    free_devices, free_cores = free_sets(topo, used_devices, used_cores, unhealthy)
    return NodeState(topo, free_devices, free_cores, frozenset(unhealthy), dict(pods or {}), OBSERVED)


def node_doc(
    name: str, state: NodeState | None = None, *, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A Node object; the annotations come from `state` through the product codec unless given raw."""
    notes = dict(annotations if annotations is not None else encode_node_state(state) if state else {})
    notes["node.alpha.kubernetes.io/ttl"] = "0"
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "creationTimestamp": "2026-11-22T01:00:00Z",
            "labels": {"kubernetes.io/hostname": name},
            "annotations": notes,
        },
        "spec": {"providerID": f"aws:///us-west-2a/{name}"},
        "status": {"capacity": {NEURON: "16"}, "allocatable": {NEURON: "16"}, "conditions": None},
    }


def container(name: str = "main", *, neuron: int = 0, cores: int = 0, sidecar: bool = False) -> dict[str, Any]:
    limits: dict[str, str] = {"cpu": "1", "memory": "1Gi"}
    if neuron:
        limits[NEURON] = str(neuron)
    if cores:
        limits[NEURONCORE] = str(cores)
    doc: dict[str, Any] = {
        "name": name,
        "image": "public.ecr.aws/neuron/app:1",
        "resources": {"limits": limits, "requests": dict(limits)},
    }
    if sidecar:
        doc["restartPolicy"] = "Always"
    return doc


def pod_doc(
    name: str,
    *,
    namespace: str = "default",
    neuron: int = 0,
    cores: int = 0,
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    node_name: str = "",
    uid: str | None = None,
    created: str = "2026-11-22T02:00:00Z",
    phase: str = "Pending",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": containers if containers is not None else [container(neuron=neuron, cores=cores)],
        "initContainers": init_containers,
        "schedulerName": "neuron-contig-scheduler",
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{namespace}-{name}",
            "creationTimestamp": created,
            "annotations": None,
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def nodes_args(pod: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """ExtenderArgs as kube-scheduler sends it with nodeCacheCapable: false."""
    return {"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}


def names_args(pod: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """ExtenderArgs as kube-scheduler sends it with nodeCacheCapable: true."""
    return {"Pod": pod, "Nodes": None, "NodeNames": names}
