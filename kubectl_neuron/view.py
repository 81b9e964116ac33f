"""The operator's view of Neuron nodes and Pending Neuron pods, built from raw API objects.

Pure: it takes the JSON the API server returned (as dicts) and a clock reading, and returns plain dataclasses
that the renderers print. Node state comes only from the plugin's `neuron-contig.io/` annotations, decoded by
`neuronalloc` (the same codec the extender uses), so what this shows is what the scheduler sees; why a device
is withdrawn comes from the plugin's `NeuronDevicesHealthy` node condition.
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
    INSTANCE_TYPE_LABEL,
    NodeState,
    NodeStateError,
    Resource,
    decode_node_state,
    hardware_in_use,
    largest_free_block,
    lookup_instance_type,
)
from neuronalloc.requests import RequestError, pod_request_from_spec
from neuronalloc.text import shorten

Obj = Mapping[str, Any]

DEFAULT_SCHEDULER_NAME = "neuron-contig-scheduler"  # the chart's schedulerName (and the extender's) default
HEALTH_CONDITION = "NeuronDevicesHealthy"  # set by the device plugin (plugin/condition.py)
ALL_HEALTHY = "AllDevicesHealthy"
MAX_CONDITION_MESSAGE = 1024  # what the plugin writes at most; longer (not ours) is cut
MAX_CONDITION_REASON = 128
# The plugin republishes on every PodResources change; a state this old means the plugin is not publishing.
STALE_AFTER_SECONDS = 600.0
INVALID_REQUEST = "InvalidRequest"  # a Pending pod whose Neuron quantity is malformed


class DeviceStatus(StrEnum):
    FREE = "free"  # healthy, no core in use: placeable as a whole device
    WHOLE = "whole"  # held whole by one pod (aws.amazon.com/neuron or its alias aws.amazon.com/neurondevice)
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
class HealthCondition:
    """The node's NeuronDevicesHealthy condition: why devices are withdrawn (or why errors are not seen)."""

    status: str  # "True" | "False" | "Unknown" (as written)
    reason: str
    message: str
    since: datetime | None  # lastTransitionTime

    @property
    def all_healthy(self) -> bool:
        return self.status == "True" and self.reason == ALL_HEALTHY


@dataclass(frozen=True)
class NodeReport:
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
    health: HealthCondition | None = None  # None: the node has no NeuronDevicesHealthy condition

    @property
    def health_problem(self) -> bool:
        """Devices withdrawn, or a condition that says something is wrong or unseen."""
        return bool(self.unhealthy_devices) or (self.health is not None and not self.health.all_healthy)

    @property
    def stale(self) -> bool:
        return self.age_seconds is not None and self.age_seconds > STALE_AFTER_SECONDS


@dataclass(frozen=True)
class PendingReport:
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
class ClusterReport:
    nodes: tuple[NodeReport, ...]
    pending: tuple[PendingReport, ...]
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


def _health(node: Obj) -> HealthCondition | None:
    found = _condition(node, HEALTH_CONDITION)
    if found is None:
        return None
    return HealthCondition(
        status=shorten(str(found.get("status", "")), 16),
        reason=shorten(str(found.get("reason", "")), MAX_CONDITION_REASON),
        message=shorten(" ".join(str(found.get("message", "")).split()), MAX_CONDITION_MESSAGE),
        since=_parse_time(found.get("lastTransitionTime")),
    )


def _device_cells(state: NodeState) -> tuple[DeviceCell, ...]:
    topo = state.topology
    # Which devices each pod's holding ties up, by the core's shared-hardware rule.
    covered = {key: hardware_in_use(topo, held.devices, held.cores).devices for key, held in state.pods.items()}
    cells = []
    for device in range(topo.device_count):
        holders = tuple(sorted(key for key, devices in covered.items() if device in devices))
        if device in state.unhealthy_devices:
            status = DeviceStatus.UNHEALTHY
        elif any(device in state.pods[key].devices for key in holders):
            status = DeviceStatus.WHOLE
        elif holders:
            status = DeviceStatus.CORES
        elif device in state.free_devices:
            status = DeviceStatus.FREE
        else:
            status = DeviceStatus.UNACCOUNTED
        free_cores = sum(1 for core in topo.cores_of_device(device) if core in state.free_cores)
        cells.append(DeviceCell(device, status, holders, free_cores))
    return tuple(cells)


def with_state(base: NodeReport, state: NodeState, now: datetime) -> NodeReport:
    """`base` with the device map and free blocks of the state the plugin published (or, on a DRA node, the
    state read from its ResourceSlices and claims)."""
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


def build_node(node: Obj, now: datetime, dra: DraInputs | None = None) -> NodeReport:
    meta = node.get("metadata", {})
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    ready_cond = _condition(node, "Ready")
    base = NodeReport(
        name=str(meta.get("name", "")),
        instance_type=labels.get(INSTANCE_TYPE_LABEL),
        ready=bool(ready_cond and ready_cond.get("status") == "True"),
        schedulable=not (node.get("spec") or {}).get("unschedulable", False),
        health=_health(node),
    )
    slices = dra.slices.get(base.name) if dra is not None else None
    if not _published(annotations) and slices and dra is not None:
        try:
            state = dra_node_state(base.name, slices, dra.claims, now)
        except DraStateError as err:
            return replace(base, error=f"unreadable DRA state: {err}", mode="dra")
        return with_state(replace(base, mode="dra"), state, now)
    if not _published(annotations):
        return replace(base, error="no neuron-contig.io/ annotations: is the device plugin running here?")
    try:
        state = decode_node_state(annotations)
    except NodeStateError as err:
        return replace(base, error=f"unreadable node state: {err}")
    return with_state(base, state, now)


# ---- pending pods -------------------------------------------------------------------------------------


def neuron_requests(pod: Obj) -> dict[str, int]:
    """What the pod holds at its busiest of each Neuron resource, by the extender's own rule
    (`neuronalloc.requests`: sidecars kept for the pod's life, a regular init container beside the sidecars
    before it). Raises RequestError on a malformed quantity, which the extender refuses too."""
    request = pod_request_from_spec(pod.get("spec"))
    peaks = {r.short: request.peak(r) for r in Resource}
    return {short: count for short, count in peaks.items() if count > 0}


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


_WHOLE = frozenset(r.short for r in Resource if r.whole_devices)
_NAMES = {r.short: r.value for r in Resource}
# Why a name may be missing from every node: said with the warning, so the cause is on the operator's screen.
_MISSING_HINT = {
    Resource.NEURONDEVICE.short: " (the alias AWS's device plugin served until 2.21; neuron-contig's plugin "
    "serves it unless run with --disable-neurondevice)",
}


def _request_warnings(requests: Mapping[str, int], advertised: frozenset[str] | None) -> list[str]:
    warnings = []
    whole = sorted(_WHOLE & set(requests))
    if whole and Resource.NEURONCORE.short in requests:
        warnings.append("asks for both whole devices and NeuronCores")
    if len(whole) > 1:
        warnings.append(
            f"asks for whole devices under two names ({' and '.join(whole)}): kubelet allocates each name "
            "separately, as two blocks"
        )
    for short in sorted(requests):
        name = _NAMES.get(short, short)
        if advertised is not None and name not in advertised:
            warnings.append(f"no node advertises {name}{_MISSING_HINT.get(short, '')}")
    return warnings


def build_pending(
    pod: Obj, event: Obj | None, advertised: frozenset[str] | None = None, ours: str = DEFAULT_SCHEDULER_NAME
) -> PendingReport | None:
    """The Pending pod's view, or None when it asks for no Neuron resource. `advertised`: the Neuron resource
    names some node's capacity lists (None = unknown, no warning about them); `ours`: the install's scheduler."""
    meta = pod.get("metadata") or {}
    scheduler = str((pod.get("spec") or {}).get("schedulerName") or "default-scheduler")
    try:
        requests = neuron_requests(pod)
    except RequestError as err:
        return PendingReport(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            scheduler_name=scheduler,
            requests={},
            created_at=_parse_time(meta.get("creationTimestamp")),
            reason=INVALID_REQUEST,
            message=f"{err}; the extender refuses this pod",
        )
    if not requests:
        return None
    warnings = []
    if scheduler != ours:
        warnings.append(f"scheduled by {scheduler}, not {ours}: its device IDs are not guaranteed contiguous")
    warnings.extend(_request_warnings(requests, advertised))
    scheduled = _condition(pod, "PodScheduled")
    if event is not None:
        reason, message = str(event.get("reason", "")), str(event.get("message", ""))
    elif scheduled is not None and scheduled.get("status") == "False":
        reason, message = str(scheduled.get("reason", "")), str(scheduled.get("message", ""))
    else:
        reason, message = "NotAttempted", f"{scheduler} has not reported a scheduling attempt yet"
    return PendingReport(
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
    scheduler_name: str = DEFAULT_SCHEDULER_NAME,
    *,
    resource_slices: Sequence[Obj] = (),
    resource_claims: Sequence[Obj] = (),
) -> ClusterReport:
    dra = DraInputs(dra_slices_by_node(resource_slices), resource_claims) if resource_slices else None
    views = (
        build_node(n, now, dra)
        for n in nodes
        if is_neuron_node(n) or (dra and n.get("metadata", {}).get("name") in dra.slices)
    )
    node_views = tuple(sorted(views, key=lambda v: natural_key(v.name)))
    latest = latest_events_by_pod(events)
    advertised = frozenset(
        name for n in nodes for name in ((n.get("status") or {}).get("capacity") or {}) if name in _NAMES.values()
    )
    pending = [
        build_pending(p, latest.get((p.get("metadata") or {}).get("uid", "")), advertised, scheduler_name)
        for p in pending_pods
    ]
    return ClusterReport(
        nodes=node_views,
        pending=tuple(sorted((p for p in pending if p is not None), key=lambda p: p.key)),
        taken_at=now,
    )
