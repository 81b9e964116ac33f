"""The node-state annotation codec: what the plugin publishes and the extender and kubectl read.

Every key lives under `neuron-contig.io/`. Nothing here is persisted state: the plugin recomputes all of it from
kubelet's PodResources at every start and change, so a reader can always trust it up to `observed-at`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from neuronalloc.catalog import resolve_topology, with_cores_per_device
from neuronalloc.ranges import RangeListError, decode_ranges, encode_ranges
from neuronalloc.topology import Topology

ANNOTATION_PREFIX = "neuron-contig.io/"
INSTANCE_TYPE = ANNOTATION_PREFIX + "instance-type"
DEVICES = ANNOTATION_PREFIX + "devices"
CORES_PER_DEVICE = ANNOTATION_PREFIX + "cores-per-device"
FREE_DEVICES = ANNOTATION_PREFIX + "free-devices"
FREE_CORES = ANNOTATION_PREFIX + "free-cores"
UNHEALTHY_DEVICES = ANNOTATION_PREFIX + "unhealthy-devices"
PODS = ANNOTATION_PREFIX + "pods"
OBSERVED_AT = ANNOTATION_PREFIX + "observed-at"

ALL_KEYS = (INSTANCE_TYPE, DEVICES, CORES_PER_DEVICE, FREE_DEVICES, FREE_CORES, UNHEALTHY_DEVICES, PODS, OBSERVED_AT)
REQUIRED_KEYS = (INSTANCE_TYPE, DEVICES, CORES_PER_DEVICE, FREE_DEVICES, FREE_CORES, OBSERVED_AT)

# Generous bounds that no Neuron node reaches; they keep a garbled annotation from describing a monster node.
MAX_DEVICES = 64
MAX_CORES_PER_DEVICE = 16
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class NodeStateError(ValueError):
    """Annotations that are missing or garbled; the message says which key and why."""


@dataclass(frozen=True)
class PodHolding:
    """What one pod holds on the node."""

    devices: frozenset[int] = frozenset()
    cores: frozenset[int] = frozenset()


@dataclass(frozen=True)
class NodeState:
    topology: Topology
    free_devices: frozenset[int]
    free_cores: frozenset[int]
    unhealthy_devices: frozenset[int]
    pods: Mapping[str, PodHolding]  # "namespace/name" -> holding
    observed_at: datetime


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def _encode_pods(pods: Mapping[str, PodHolding]) -> str:
    doc: dict[str, dict[str, str]] = {}
    for key in sorted(pods):
        holding = pods[key]
        entry = {}
        if holding.devices:
            entry["devices"] = encode_ranges(holding.devices)
        if holding.cores:
            entry["cores"] = encode_ranges(holding.cores)
        doc[key] = entry
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def encode_node_state(state: NodeState) -> dict[str, str]:
    topo = state.topology
    return {
        INSTANCE_TYPE: topo.instance_type,
        DEVICES: str(topo.device_count),
        CORES_PER_DEVICE: str(topo.cores_per_device),
        FREE_DEVICES: encode_ranges(state.free_devices),
        FREE_CORES: encode_ranges(state.free_cores),
        UNHEALTHY_DEVICES: encode_ranges(state.unhealthy_devices),
        PODS: _encode_pods(state.pods),
        OBSERVED_AT: format_time(state.observed_at),
    }


def _bounded_int(annotations: Mapping[str, str], key: str, low: int, high: int) -> int:
    text = annotations[key]
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise NodeStateError(f"{key}={text!r}: expected a whole number from {low} to {high}")
    return int(text)


def _ranges(annotations: Mapping[str, str], key: str, limit: int) -> frozenset[int]:
    try:
        return decode_ranges(annotations.get(key, ""), limit=limit)
    except RangeListError as err:
        raise NodeStateError(f"{key}: {err}") from err


def _decode_pods(text: str, topo: Topology) -> dict[str, PodHolding]:
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise NodeStateError(f"{PODS}: not JSON ({err})") from err
    if not isinstance(doc, dict):
        raise NodeStateError(f"{PODS}: expected a JSON object of namespace/name keys")
    pods: dict[str, PodHolding] = {}
    for key, entry in doc.items():
        if not isinstance(entry, dict) or "/" not in key:
            raise NodeStateError(f"{PODS}: entry {key!r} is not namespace/name -> {{devices, cores}}")
        try:
            devices = decode_ranges(entry.get("devices", ""), limit=topo.device_count)
            cores = decode_ranges(entry.get("cores", ""), limit=topo.core_count)
        except RangeListError as err:
            raise NodeStateError(f"{PODS}: entry {key!r}: {err}") from err
        pods[key] = PodHolding(devices, cores)
    return pods


def decode_node_state(annotations: Mapping[str, str]) -> NodeState:
    """The node state the annotations describe. Raises NodeStateError naming the first bad key."""
    missing = [key for key in REQUIRED_KEYS if key not in annotations]
    if missing:
        raise NodeStateError(f"missing annotations: {', '.join(missing)}")
    for key in ALL_KEYS:
        if key in annotations and not isinstance(annotations[key], str):
            raise NodeStateError(f"{key}: expected a string")
    devices = _bounded_int(annotations, DEVICES, 1, MAX_DEVICES)
    cores_per_device = _bounded_int(annotations, CORES_PER_DEVICE, 1, MAX_CORES_PER_DEVICE)
    topo = with_cores_per_device(resolve_topology(annotations[INSTANCE_TYPE], devices), cores_per_device)
    free_devices = _ranges(annotations, FREE_DEVICES, topo.device_count)
    free_cores = _ranges(annotations, FREE_CORES, topo.core_count)
    unhealthy = _ranges(annotations, UNHEALTHY_DEVICES, topo.device_count)
    if not topo.cores_of_devices(free_devices) <= free_cores:
        raise NodeStateError(f"{FREE_DEVICES} lists a device whose cores are not all in {FREE_CORES}")
    if free_devices & unhealthy:
        raise NodeStateError(f"{FREE_DEVICES} and {UNHEALTHY_DEVICES} overlap")
    try:
        observed = datetime.strptime(annotations[OBSERVED_AT], _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as err:
        raise NodeStateError(f"{OBSERVED_AT}={annotations[OBSERVED_AT]!r}: expected RFC 3339 UTC") from err
    pods = _decode_pods(annotations.get(PODS, "{}"), topo)
    return NodeState(
        topology=topo,
        free_devices=free_devices,
        free_cores=free_cores,
        unhealthy_devices=unhealthy,
        pods=pods,
        observed_at=observed,
    )
