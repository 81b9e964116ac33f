"""The operator's view of Neuron nodes and Pending Neuron pods, built from raw API objects.

Pure: it takes the JSON the API server returned (as dicts) and a clock reading, and returns plain dataclasses
that the renderers print. Node state comes only from the plugin's `neuron-contig.io/` annotations, decoded by
`neuronalloc` (the same codec the extender uses), so what this shows is what the scheduler sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from kubectl_neuron.dra import DraStateError, dra_node_state, dra_slices_by_node
from neuronalloc import (
    ANNOTATION_PREFIX,
    NodeState,
    NodeStateError,
    Resource,
    decode_node_state,
    largest_free_block,
    lookup_instance_type,
)

Obj = Mapping[str, Any]

INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
NEURON_SCHEDULER = "neuron-contig-scheduler"
# The plugin republishes on every PodResources change; a state this old means the plugin is not publishing.
STALE_AFTER_SECONDS = 600.0


class DeviceStatus(StrEnum):
    FREE = "free"  # healthy, no core in use: placeable as a whole device
    WHOLE = "whole"  # held whole by one pod (aws.amazon.com/neuron)
    CORES = "cores"  # some of its cores held (aws.amazon.com/neuroncore)
    UNHEALTHY = "unhealthy"
    UNACCOUNTED = "unaccounted"  # not free, yet no pod in the annotation holds it (a pod from before a restart?)


@dataclass(frozen=True)
class DeviceCell:
    device: int
    status: DeviceStatus
    pods: tuple[str, ...]  # "namespace/name" of every holder
    free_cores: int


@dataclass(frozen=True)
class NodeView:
    name: str
    instance_type: str | None
    ready: bool
    schedulable: bool
    error: str | None = None  # why there is no device map (no annotations, or garbled ones)
    topology_known: bool = True
    device_count: int = 0
    cores_per_device: int = 0
    devices: tuple[DeviceCell, ...] = ()
    free_devices: frozenset[int] = frozenset()
    free_cores: frozenset[int] = frozenset()
    unhealthy_devices: frozenset[int] = frozenset()
    largest_free_devices: int = 0
    largest_free_cores: int = 0
    pods: tuple[str, ...] = ()
    observed_at: datetime | None = None
    age_seconds: float | None = None
    mode: str = "device-plugin"  # or "dra": the state comes from ResourceSlices and claims, not annotations

    @property
    def stale(self) -> bool:
        return self.age_seconds is not None and self.age_seconds > STALE_AFTER_SECONDS


@dataclass(frozen=True)
class PendingPod:
    namespace: str
    name: str
    scheduler_name: str
    requests: Mapping[str, int]  # Resource.short -> count
    created_at: datetime | None
    reason: str  # e.g. "Unschedulable", or "NotAttempted"
    message: str
    warnings: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ClusterView:
    nodes: tuple[NodeView, ...]
    pending: tuple[PendingPod, ...]
    taken_at: datetime
    warnings: tuple[str, ...] = field(default=())


# ---- nodes --------------------------------------------------------------------------------------------


def _published(annotations: Obj) -> bool:
    """Whether the plugin has written any of its annotations on the node."""
    return any(key.startswith(ANNOTATION_PREFIX) for key in annotations)


def is_neuron_node(node: Obj) -> bool:
    """A node the plugin publishes for, advertises Neuron capacity, or has a Neuron instance type."""
    meta = node.get("metadata", {})
    if _published(meta.get("annotations") or {}):
        return True
    capacity = (node.get("status") or {}).get("capacity") or {}
    if any(resource.value in capacity for resource in Resource):
        return True
    return lookup_instance_type((meta.get("labels") or {}).get(INSTANCE_TYPE_LABEL)) is not None


def _condition(obj: Obj, kind: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond  # type: ignore[no-any-return]
    return None


def _device_cells(state: NodeState) -> tuple[DeviceCell, ...]:
    topo = state.topology
    cells = []
    for device in range(topo.device_count):
        cores = set(topo.cores_of_device(device))
        whole = [key for key, held in state.pods.items() if device in held.devices]
        by_core = [key for key, held in state.pods.items() if held.cores & cores]
        if device in state.unhealthy_devices:
            status = DeviceStatus.UNHEALTHY
        elif whole:
            status = DeviceStatus.WHOLE
        elif by_core:
            status = DeviceStatus.CORES
        elif device in state.free_devices:
            status = DeviceStatus.FREE
        else:
            status = DeviceStatus.UNACCOUNTED
        cells.append(DeviceCell(device, status, tuple(sorted(whole + by_core)), len(cores & state.free_cores)))
    return tuple(cells)


def build_node(node: Obj, now: datetime, dra: DraInputs | None = None) -> NodeView:
    meta = node.get("metadata", {})
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    ready_cond = _condition(node, "Ready")
    base = NodeView(
        name=str(meta.get("name", "")),
        instance_type=labels.get(INSTANCE_TYPE_LABEL),
        ready=bool(ready_cond and ready_cond.get("status") == "True"),
        schedulable=not (node.get("spec") or {}).get("unschedulable", False),
    )
    slices = dra.slices.get(base.name) if dra is not None else None
    if not _published(annotations) and slices and dra is not None:
        try:
            state = dra_node_state(base.name, slices, dra.claims, now)
        except DraStateError as err:
            return replace(base, error=f"unreadable DRA state: {err}", mode="dra")
        base = replace(base, mode="dra")
    elif not _published(annotations):
        return replace(base, error="no neuron-contig.io/ annotations: is the device plugin running here?")
    else:
        try:
            state = decode_node_state(annotations)
        except NodeStateError as err:
            return replace(base, error=f"unreadable node state: {err}")
    topo = state.topology
    return replace(
        base,
        instance_type=topo.instance_type,
        topology_known=topo.known,
        device_count=topo.device_count,
        cores_per_device=topo.cores_per_device,
        devices=_device_cells(state),
        free_devices=state.free_devices,
        free_cores=state.free_cores,
        unhealthy_devices=state.unhealthy_devices,
        largest_free_devices=largest_free_block(topo, Resource.NEURON, state.free_devices),
        largest_free_cores=largest_free_block(topo, Resource.NEURONCORE, state.free_cores),
        pods=tuple(sorted(state.pods)),
        observed_at=state.observed_at,
        age_seconds=max(0.0, (now - state.observed_at).total_seconds()),
    )


# ---- pending pods -------------------------------------------------------------------------------------


def _quantity(value: Any) -> int:
    """Extended resources are whole numbers; anything else counts as 0 rather than guessing."""
    text = str(value)
    return int(text) if text.isdigit() else 0


def _container_requests(container: Obj) -> dict[str, int]:
    resources = container.get("resources") or {}
    # Extended resources must have limits == requests when both are set; limits alone imply requests.
    merged = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
    return {r.short: _quantity(merged[r.value]) for r in Resource if r.value in merged}


def neuron_requests(pod: Obj) -> dict[str, int]:
    """What the pod needs of each Neuron resource: max(sum of app containers, largest init container)."""
    spec = pod.get("spec") or {}
    total: dict[str, int] = {}
    for container in spec.get("containers") or []:
        for short, count in _container_requests(container).items():
            total[short] = total.get(short, 0) + count
    for container in spec.get("initContainers") or []:
        for short, count in _container_requests(container).items():
            total[short] = max(total.get(short, 0), count)
    return {short: count for short, count in total.items() if count > 0}


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def _event_time(event: Obj) -> datetime:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        moment = _parse_time(event.get(key))
        if moment is not None:
            return moment
    return _parse_time((event.get("metadata") or {}).get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC)


def latest_events_by_pod(events: Iterable[Obj]) -> dict[str, Obj]:
    """The newest scheduling event of each pod, keyed by the pod's UID."""
    latest: dict[str, Obj] = {}
    for event in events:
        uid = (event.get("involvedObject") or {}).get("uid")
        if uid and (uid not in latest or _event_time(event) >= _event_time(latest[uid])):
            latest[uid] = event
    return latest


def build_pending(pod: Obj, event: Obj | None) -> PendingPod | None:
    """The Pending pod's view, or None when it asks for no Neuron resource."""
    requests = neuron_requests(pod)
    if not requests:
        return None
    meta = pod.get("metadata") or {}
    scheduler = str((pod.get("spec") or {}).get("schedulerName") or "default-scheduler")
    warnings = []
    if scheduler != NEURON_SCHEDULER:
        warnings.append(
            f"scheduled by {scheduler}, not {NEURON_SCHEDULER}: its device IDs are not guaranteed contiguous"
        )
    if len(requests) > 1:
        warnings.append("asks for both whole devices and NeuronCores")
    scheduled = _condition(pod, "PodScheduled")
    if event is not None:
        reason, message = str(event.get("reason", "")), str(event.get("message", ""))
    elif scheduled is not None and scheduled.get("status") == "False":
        reason, message = str(scheduled.get("reason", "")), str(scheduled.get("message", ""))
    else:
        reason, message = "NotAttempted", f"{scheduler} has not reported a scheduling attempt yet"
    return PendingPod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        scheduler_name=scheduler,
        requests=requests,
        created_at=_parse_time(meta.get("creationTimestamp")),
        reason=reason,
        message=" ".join(message.split()),
        warnings=tuple(warnings),
    )


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """ip-10-1-0-2 before ip-10-1-0-10: node names carry numbers, and operators read them as numbers."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


@dataclass(frozen=True)
class DraInputs:
    slices: Mapping[str, Sequence[Obj]]  # node -> its slices of our driver (newest generation)
    claims: Sequence[Obj]


def build_view(
    nodes: Sequence[Obj],
    pending_pods: Sequence[Obj],
    events: Sequence[Obj],
    now: datetime,
    *,
    resource_slices: Sequence[Obj] = (),
    resource_claims: Sequence[Obj] = (),
) -> ClusterView:
    dra = DraInputs(dra_slices_by_node(resource_slices), resource_claims) if resource_slices else None
    views = (
        build_node(n, now, dra)
        for n in nodes
        if is_neuron_node(n) or (dra and n.get("metadata", {}).get("name") in dra.slices)
    )
    node_views = tuple(sorted(views, key=lambda v: natural_key(v.name)))
    latest = latest_events_by_pod(events)
    pending = [build_pending(p, latest.get((p.get("metadata") or {}).get("uid", ""))) for p in pending_pods]
    return ClusterView(
        nodes=node_views,
        pending=tuple(sorted((p for p in pending if p is not None), key=lambda p: p.key)),
        taken_at=now,
    )
