"""DRA mode's vocabulary for the cluster tests: DeviceClasses, block claims, and what a pod was given.

A DRA pod asks for one block through a ResourceClaimTemplate (`neuronalloc.draslices.claim_template`, the same
requests the shipped examples make); the stock scheduler allocates the claim, kubelet's DRA manager calls our
driver, and the simulated node records the CDI device IDs it would hand the runtime in the pod's allocation
annotation. `dra_grant` reads all three back: the claim's allocation results, the pod's CDI IDs and the CDI spec
the driver wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from neuronalloc import Resource, encode_ranges
from neuronalloc.draslices import DRIVER, UNHEALTHY_TAINT, Block, Grant, claim_template, grant_of, parse_block_name
from tests.cluster.harness import DRA_SCHEDULER, POOL_LABEL, REPO_ROOT, Cluster
from tests.cluster.workload import ALLOCATION_ANNOTATION, INSTANCE_TYPE_LABEL, Pool

DEVICE_CLASSES = REPO_ROOT / "deploy" / "dra" / "deviceclasses.yaml"
RESOURCE_GROUP, RESOURCE_VERSION = "resource.k8s.io", "v1"


def install_device_classes(cluster: Cluster) -> None:
    """deploy/dra/deviceclasses.yaml, as shipped (once per control plane)."""
    custom = k8s.CustomObjectsApi(cluster.api)
    for doc in yaml.safe_load_all(DEVICE_CLASSES.read_text()):
        try:
            custom.create_cluster_custom_object(RESOURCE_GROUP, RESOURCE_VERSION, "deviceclasses", doc)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise


def template_name(resource: Resource, size: int) -> str:
    return f"{resource.short}-{size}"


def create_template(pool: Pool, resource: Resource, size: int) -> str:
    name = template_name(resource, size)
    custom = k8s.CustomObjectsApi(pool.cluster.api)
    try:
        custom.create_namespaced_custom_object(
            RESOURCE_GROUP, RESOURCE_VERSION, pool.namespace, "resourceclaimtemplates",
            claim_template(name, resource, size),
        )  # fmt: skip
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise
    return name


def dra_pod(name: str, template: str, *, pool: str, instance_type: str | None = None) -> dict[str, Any]:
    selector = {POOL_LABEL: pool}
    if instance_type:
        selector[INSTANCE_TYPE_LABEL] = instance_type
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {POOL_LABEL: pool}},
        "spec": {
            "schedulerName": DRA_SCHEDULER,
            "nodeSelector": selector,
            "tolerations": [{"key": POOL_LABEL, "operator": "Equal", "value": pool, "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 0,
            "resourceClaims": [{"name": "neuron", "resourceClaimTemplateName": template}],
            "containers": [
                {"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": {"claims": [{"name": "neuron"}]}}
            ],
        },
    }


def create_dra_pod(pool: Pool, name: str, resource: Resource, size: int, *, instance_type: str | None = None) -> str:
    template = create_template(pool, resource, size)
    pool.core.create_namespaced_pod(pool.namespace, dra_pod(name, template, pool=pool.name,
                                                            instance_type=instance_type))  # fmt: skip
    return name


@dataclass(frozen=True)
class DraGrant:
    pod: str
    node: str
    claim: str
    blocks: tuple[Block, ...]
    grant: Grant
    cdi_ids: tuple[str, ...]  # what the node would hand the runtime for the container
    spec: dict[str, Any]  # the CDI spec the driver wrote for the claim


def claim_of(pool: Pool, pod_name: str) -> dict[str, Any]:
    pod = pool.pod(pod_name)
    statuses = pod.status.resource_claim_statuses or []
    (status,) = statuses
    custom = k8s.CustomObjectsApi(pool.cluster.api)
    claim: dict[str, Any] = custom.get_namespaced_custom_object(
        RESOURCE_GROUP, RESOURCE_VERSION, pool.namespace, "resourceclaims", status.resource_claim_name
    )
    return claim


def dra_grant(pool: Pool, pod_name: str) -> DraGrant:
    pod = pool.pod(pod_name)
    node = pool.nodes[pod.spec.node_name]
    claim = claim_of(pool, pod_name)
    results = claim["status"]["allocation"]["devices"]["results"]
    assert all(r["driver"] == DRIVER and r["pool"] == node.name for r in results), results
    blocks = tuple(parse_block_name(r["device"], node.topology) for r in results)
    raw = (pod.metadata.annotations or {}).get(ALLOCATION_ANNOTATION)
    assert raw is not None, f"{pod_name}: no allocation annotation (phase {pod.status.phase})"
    (container,) = json.loads(raw)["containers"]
    uid = claim["metadata"]["uid"]
    assert node.cdi_root is not None
    spec = json.loads((node.cdi_root / f"neuron-contig.io-claim_{uid}.json").read_text())
    return DraGrant(
        pod=pod_name,
        node=node.name,
        claim=claim["metadata"]["name"],
        blocks=blocks,
        grant=grant_of(node.topology, list(blocks)),
        cdi_ids=tuple(container.get("cdiDevices") or ()),
        spec=spec,
    )


def assert_dra_grant_ok(pool: Pool, got: DraGrant, resource: Resource, size: int) -> None:
    """One legal block of the asked size; the CDI spec names exactly its devices with Allocate's env; the pod
    gets exactly that CDI device."""
    node = pool.nodes[got.node]
    grant = got.grant  # grant_of already refused anything that is not one legal block of one resource
    assert grant.resource is resource and len(grant.ids) == size, got
    (device,) = got.spec["devices"]
    assert got.cdi_ids == (f"neuron-contig.io/neuron={device['name']}",), got
    edits = device["containerEdits"]
    assert sorted(n["path"] for n in edits["deviceNodes"]) == sorted(f"/dev/neuron{d}" for d in grant.devices)
    assert sorted(n["hostPath"] for n in edits["deviceNodes"]) == sorted(
        str(Path(node.device_root) / f"neuron{d}") for d in grant.devices
    )
    envs = {
        "NEURON_RT_VISIBLE_CORES": encode_ranges(grant.cores),
        "AWS_NEURON_VISIBLE_DEVICES": encode_ranges(grant.devices),
    }
    assert sorted(edits["env"]) == sorted(f"{k}={v}" for k, v in envs.items())


def assert_no_dra_overlap(grants: Iterable[DraGrant]) -> None:
    """No device or core twice on a node; no device held whole while a core of it is held."""
    whole: dict[tuple[str, int], str] = {}
    cores: dict[tuple[str, int], str] = {}
    core_devices: dict[tuple[str, int], str] = {}
    for got in grants:
        if got.grant.resource is Resource.NEURON:
            for d in got.grant.devices:
                other = whole.setdefault((got.node, d), got.pod)
                assert other == got.pod, f"device {d} on {got.node}: {other} and {got.pod}"
        else:
            for c in got.grant.cores:
                other = cores.setdefault((got.node, c), got.pod)
                assert other == got.pod, f"core {c} on {got.node}: {other} and {got.pod}"
            for d in got.grant.devices:
                core_devices[(got.node, d)] = got.pod
    for key, pod in whole.items():
        assert key not in core_devices, f"device {key} held whole by {pod} and by cores of {core_devices[key]}"


def slices_of(cluster: Cluster, node: str) -> list[dict[str, Any]]:
    custom = k8s.CustomObjectsApi(cluster.api)
    listed = custom.list_cluster_custom_object(
        RESOURCE_GROUP, RESOURCE_VERSION, "resourceslices", field_selector=f"spec.nodeName={node}"
    )
    return list(listed["items"])


def tainted_blocks(cluster: Cluster, node: str) -> set[str]:
    """Blocks the driver withdrew for an unhealthy device (its NoSchedule taint)."""
    return {
        device["name"]
        for item in slices_of(cluster, node)
        for device in item["spec"].get("devices") or []
        if any(t.get("key") == UNHEALTHY_TAINT and t.get("effect") == "NoSchedule" for t in device.get("taints") or [])
    }
