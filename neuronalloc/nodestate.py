"""The node-state annotation codec: what the plugin publishes and the extender and kubectl read.

Every key lives under `neuron-contig.io/`. Nothing here is persisted state: the plugin recomputes all of it from
kubelet's PodResources at every start and change, so a reader can always trust it up to `observed-at`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from neuronalloc.catalog import resolve_topology, with_cores_per_device
from neuronalloc.ranges import RangeListError, decode_ranges, encode_ranges
from neuronalloc.text import quote, shorten
from neuronalloc.topology import Topology

ANNOTATION_PREFIX = "neuron-contig.io/"
# Kubernetes' well-known node label the instance type is read from (by the plugin, and by kubectl neuron to
# recognise a Neuron node the plugin has not published for).
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
INSTANCE_TYPE = ANNOTATION_PREFIX + "instance-type"
DEVICES = ANNOTATION_PREFIX + "devices"
CORES_PER_DEVICE = ANNOTATION_PREFIX + "cores-per-device"
FREE_DEVICES = ANNOTATION_PREFIX + "free-devices"
FREE_CORES = ANNOTATION_PREFIX + "free-cores"
UNHEALTHY_DEVICES = ANNOTATION_PREFIX + "unhealthy-devices"
PODS = ANNOTATION_PREFIX + "pods"
OBSERVED_AT = ANNOTATION_PREFIX + "observed-at"
# Optional, so that a state written by hand (or by an older plugin) still reads as serving:
SERVING = ANNOTATION_PREFIX + "serving"  # "true", or why the plugin cannot serve kubelet now
PLUGIN_ADDRESS = ANNOTATION_PREFIX + "plugin-address"  # "ip:port" of the plugin's /readyz

ALL_KEYS = (
    INSTANCE_TYPE, DEVICES, CORES_PER_DEVICE, FREE_DEVICES, FREE_CORES, UNHEALTHY_DEVICES, PODS, OBSERVED_AT,
    SERVING, PLUGIN_ADDRESS,
)  # fmt: skip
REQUIRED_KEYS = (INSTANCE_TYPE, DEVICES, CORES_PER_DEVICE, FREE_DEVICES, FREE_CORES, OBSERVED_AT)

# Generous bounds that no Neuron node reaches; they keep a garbled annotation from describing a monster node.
MAX_DEVICES = 64
MAX_CORES_PER_DEVICE = 16
# An instance type is a short DNS-like word ("trn1.32xlarge", "ml.inf2.48xlarge").
_INSTANCE_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# The pods annotation: one entry per pod holding something, and the API server caps all annotations of an
# object at 256 KiB together; a Nodes-mode request is not checked by the API server, so bound it here too.
MAX_PODS_TEXT = 256 * 1024
MAX_REASON = 200  # a not-serving reason, as published and as shown
SERVING_TRUE = "true"
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
    # Whether the plugin can serve kubelet now (registered, and its view of kubelet's allocations fresh);
    # when it cannot, why. A pod bound to a node that is not serving would fail admission.
    serving: bool = True
    not_serving_reason: str = ""
    plugin_address: str = ""  # "ip:port" where the plugin answers GET /readyz; "" = not published

    def __post_init__(self) -> None:
        if self.serving == bool(self.not_serving_reason):
            raise ValueError("not_serving_reason is set exactly when serving is False")


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
    encoded = {
        INSTANCE_TYPE: topo.instance_type,
        DEVICES: str(topo.device_count),
        CORES_PER_DEVICE: str(topo.cores_per_device),
        FREE_DEVICES: encode_ranges(state.free_devices),
        FREE_CORES: encode_ranges(state.free_cores),
        UNHEALTHY_DEVICES: encode_ranges(state.unhealthy_devices),
        PODS: _encode_pods(state.pods),
        OBSERVED_AT: format_time(state.observed_at),
        SERVING: SERVING_TRUE if state.serving else shorten(state.not_serving_reason, MAX_REASON),
    }
    if state.plugin_address:
        encoded[PLUGIN_ADDRESS] = state.plugin_address
    return encoded


def _bounded_int(annotations: Mapping[str, str], key: str, low: int, high: int) -> int:
    text = annotations[key]
    if not text.isascii() or not text.isdigit() or len(text) > len(str(high)) or not low <= int(text) <= high:
        raise NodeStateError(f"{key}={quote(text, 40)}: expected a whole number from {low} to {high}")
    return int(text)


def _instance_type(annotations: Mapping[str, str]) -> str:
    text = annotations[INSTANCE_TYPE]
    if not _INSTANCE_TYPE.fullmatch(text):
        raise NodeStateError(f"{INSTANCE_TYPE}={quote(text, 70)}: expected an instance type name")
    return text


def parse_plugin_address(text: str) -> str:
    """`text` if it is an IP literal and a port ("10.0.1.7:9410", "[fd00::7]:9410"), else NodeStateError.

    IP literals only: the address comes from an annotation, and a host name would let whoever writes it point
    readers at any service."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        raise NodeStateError(f"{PLUGIN_ADDRESS}={quote(text, 70)}: expected ip:port")
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        raise NodeStateError(f"{PLUGIN_ADDRESS}={quote(text, 70)}: the host must be an IP address") from None
    if (address.version == 6) != (literal != host):
        raise NodeStateError(f"{PLUGIN_ADDRESS}={quote(text, 70)}: an IPv6 host goes in brackets, IPv4 not")
    return text


def _ranges(annotations: Mapping[str, str], key: str, limit: int) -> frozenset[int]:
    try:
        return decode_ranges(annotations.get(key, ""), limit=limit)
    except RangeListError as err:
        raise NodeStateError(f"{key}: {err}") from None


def _decode_pods(text: str, topo: Topology) -> dict[str, PodHolding]:
    if len(text) > MAX_PODS_TEXT:
        raise NodeStateError(f"{PODS}: {len(text)} characters is above the limit of {MAX_PODS_TEXT}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise NodeStateError(f"{PODS}: not JSON ({shorten(str(err))})") from None
    if not isinstance(doc, dict):
        raise NodeStateError(f"{PODS}: expected a JSON object of namespace/name keys")
    # Every pod listed holds at least one device or core, so a real node lists no more than this.
    if len(doc) > topo.device_count + topo.core_count:
        raise NodeStateError(f"{PODS}: {len(doc)} entries on a node of {topo.core_count} NeuronCores")
    pods: dict[str, PodHolding] = {}
    for key, entry in doc.items():
        if not isinstance(entry, dict) or "/" not in key or len(key) > 64 + 253:
            raise NodeStateError(f"{PODS}: entry {quote(key, 80)} is not namespace/name -> {{devices, cores}}")
        try:
            devices = decode_ranges(entry.get("devices", ""), limit=topo.device_count)
            cores = decode_ranges(entry.get("cores", ""), limit=topo.core_count)
        except RangeListError as err:
            raise NodeStateError(f"{PODS}: entry {quote(key, 80)}: {err}") from None
        pods[key] = PodHolding(devices, cores)
    return pods


def _serving(annotations: Mapping[str, str]) -> tuple[bool, str]:
    text = annotations.get(SERVING, SERVING_TRUE)
    if text == SERVING_TRUE:
        return True, ""
    if not text or len(text) > MAX_REASON:
        raise NodeStateError(
            f"{SERVING}={quote(text, 70)}: expected {SERVING_TRUE!r} or a reason of 1-{MAX_REASON} characters"
        )
    return False, text


def decode_node_state(annotations: Mapping[str, str]) -> NodeState:
    """The node state the annotations describe. Raises NodeStateError naming the first bad key."""
    missing = [key for key in REQUIRED_KEYS if key not in annotations]
    if missing:
        raise NodeStateError(f"missing annotations: {', '.join(missing)}")
    for key in ALL_KEYS:
        if key in annotations and not isinstance(annotations[key], str):
            raise NodeStateError(f"{key}: expected a string")
    instance_type = _instance_type(annotations)
    devices = _bounded_int(annotations, DEVICES, 1, MAX_DEVICES)
    cores_per_device = _bounded_int(annotations, CORES_PER_DEVICE, 1, MAX_CORES_PER_DEVICE)
    topo = with_cores_per_device(resolve_topology(instance_type, devices), cores_per_device)
    free_devices = _ranges(annotations, FREE_DEVICES, topo.device_count)
    free_cores = _ranges(annotations, FREE_CORES, topo.core_count)
    unhealthy = _ranges(annotations, UNHEALTHY_DEVICES, topo.device_count)
    if not topo.cores_of_devices(free_devices) <= free_cores:
        raise NodeStateError(f"{FREE_DEVICES} lists a device whose cores are not all in {FREE_CORES}")
    if free_devices & unhealthy:
        raise NodeStateError(f"{FREE_DEVICES} and {UNHEALTHY_DEVICES} overlap")
    observed_text = annotations[OBSERVED_AT]
    try:
        if len(observed_text) != len("2026-01-01T00:00:00Z"):
            raise ValueError("wrong length")
        observed = datetime.strptime(observed_text, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise NodeStateError(f"{OBSERVED_AT}={quote(observed_text, 40)}: expected RFC 3339 UTC") from None
    pods = _decode_pods(annotations.get(PODS, "{}"), topo)
    serving, reason = _serving(annotations)
    address = annotations.get(PLUGIN_ADDRESS, "")
    return NodeState(
        topology=topo,
        free_devices=free_devices,
        free_cores=free_cores,
        unhealthy_devices=unhealthy,
        pods=pods,
        observed_at=observed,
        serving=serving,
        not_serving_reason=reason,
        plugin_address=parse_plugin_address(address) if address else "",
    )
