"""Text and JSON renderings of a ClusterReport.

The table is one line per node, so that 100 nodes fit one screen's scroll: the device map is one glyph per
device, grouped by four (a trn row). `wide` adds which pod each map letter stands for. JSON carries
everything, with range lists in the same grammar as the annotations. Nodes with withdrawn devices (or whose
hardware errors are not seen) get a second table with the plugin's NeuronDevicesHealthy condition: the why.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kubectl_neuron.view import ClusterReport, DeviceCell, DeviceStatus, NodeReport, PendingReport
from neuronalloc import encode_ranges
from neuronalloc.draslices import UNHEALTHY_TAINT
from neuronalloc.nodestate import format_time

FREE_GLYPH = "."
UNHEALTHY_GLYPH = "X"
UNACCOUNTED_GLYPH = "?"
SHARED_GLYPH = "#"  # a device whose cores are split between several pods
OVERFLOW_GLYPH = "@"  # more pods on one node than letters
LEGEND = (
    f"map: {FREE_GLYPH} free   {UNHEALTHY_GLYPH} unhealthy   A-Z device held whole by a pod   "
    f"a-z some cores held by a pod   {SHARED_GLYPH} cores held by several pods   "
    f"{UNACCOUNTED_GLYPH} in use, holder not listed"
)


def pod_letters(node: NodeReport) -> dict[str, str]:
    """A letter per holder pod, in the order of the first device it holds (stable for a given state)."""
    letters: dict[str, str] = {}
    for cell in node.devices:
        for pod in cell.pods:
            if pod not in letters:
                index = len(letters)
                letters[pod] = string.ascii_uppercase[index] if index < 26 else OVERFLOW_GLYPH
    return letters


def _glyph(cell: DeviceCell, letters: dict[str, str]) -> str:
    if cell.status is DeviceStatus.UNHEALTHY:
        return UNHEALTHY_GLYPH
    if cell.status is DeviceStatus.FREE:
        return FREE_GLYPH
    if cell.status is DeviceStatus.UNACCOUNTED:
        return UNACCOUNTED_GLYPH
    if cell.status is DeviceStatus.CORES and len(cell.pods) > 1:
        return SHARED_GLYPH
    letter = letters[cell.pods[0]]
    return letter.lower() if cell.status is DeviceStatus.CORES else letter


def device_map(node: NodeReport) -> str:
    letters = pod_letters(node)
    glyphs = "".join(_glyph(cell, letters) for cell in node.devices)
    return " ".join(glyphs[i : i + 4] for i in range(0, len(glyphs), 4))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _status(node: NodeReport) -> str:
    flags = []
    if not node.ready:
        flags.append("NotReady")
    if not node.schedulable:
        flags.append("Cordoned")
    if node.error:
        flags.append("NoState")
    elif node.stale:
        flags.append("Stale")
    if node.unhealthy_devices or (node.health is not None and node.health.status == "False"):
        flags.append("Unhealthy")
    elif node.health is not None and not node.health.all_healthy:
        flags.append("HwUnwatched")  # devices present, but hardware errors are not seen (the message says why)
    if not node.topology_known and not node.error:
        flags.append("Fallback")
    if node.mode == "dra":
        flags.append("DRA")
    return ",".join(flags) or "OK"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _node_row(node: NodeReport) -> list[str]:
    if node.error:
        return [node.name, node.instance_type or "-", "-", "-", "-", "-", "-", _status(node), node.error]
    total_cores = node.device_count * node.cores_per_device
    return [
        node.name,
        node.instance_type or "-",
        f"{len(node.free_devices)}/{node.device_count}",
        str(node.largest_free_devices),
        f"{len(node.free_cores)}/{total_cores}",
        str(node.largest_free_cores),
        _age(node.age_seconds),
        _status(node),
        device_map(node),
    ]


def _holders(node: NodeReport) -> str:
    return " ".join(f"{letter}={pod}" for pod, letter in pod_letters(node).items())


def _summary(view: ClusterReport) -> str:
    mapped = [n for n in view.nodes if not n.error]
    devices = sum(n.device_count for n in mapped)
    free = sum(len(n.free_devices) for n in mapped)
    unhealthy = sum(len(n.unhealthy_devices) for n in mapped)
    largest = max((n.largest_free_devices for n in mapped), default=0)
    largest_cores = max((n.largest_free_cores for n in mapped), default=0)
    without_state = len(view.nodes) - len(mapped)
    parts = [
        f"{len(view.nodes)} Neuron nodes",
        f"{devices} devices: {free} free, {unhealthy} unhealthy",
        f"largest free block: {largest} devices, {largest_cores} cores",
        f"{len(view.pending)} Pending pods need Neuron",
    ]
    if without_state:
        parts.append(f"{without_state} nodes without state")
    return "; ".join(parts)


def _requests(pod: PendingReport) -> str:
    return ",".join(f"{short}={count}" for short, count in sorted(pod.requests.items()))


def _pending_rows(view: ClusterReport, wide: bool, width: int) -> list[str]:
    header = ["POD", "WANTS", "SCHEDULER", "WAITING", "REASON", "MESSAGE"]
    rows = [header]
    for pod in view.pending:
        waiting = _age((view.taken_at - pod.created_at).total_seconds()) if pod.created_at else "-"
        message = "; ".join([pod.message, *pod.warnings]) if pod.warnings else pod.message
        rows.append([pod.key, _requests(pod), pod.scheduler_name, waiting, pod.reason, message])
    lines = _columns(rows)
    if not wide:
        lines = [line if len(line) <= width else line[: max(width - 3, 20)] + "..." for line in lines]
    return lines


def _no_condition(node: NodeReport) -> str:
    if node.mode == "dra":  # the DRA driver writes no node condition: its slices' taints are the record
        return f"DRA node: blocks on these devices carry the {UNHEALTHY_TAINT} taint"
    return "no NeuronDevicesHealthy condition on the node (plugin not running here?)"


def _health_rows(view: ClusterReport, wide: bool, width: int, now: datetime) -> list[str]:
    """Why devices are withdrawn (or errors unseen), per node: the plugin's NeuronDevicesHealthy condition."""
    header = ["NODE", "UNHEALTHY", "CONDITION", "SINCE", "MESSAGE"]
    rows = [header]
    for node in view.nodes:
        if not node.health_problem:
            continue
        health = node.health
        since = _age((now - health.since).total_seconds()) if health and health.since else "-"
        rows.append([
            node.name,
            encode_ranges(node.unhealthy_devices) or "-",
            f"{health.status} {health.reason}" if health else "-",
            since,
            health.message if health else _no_condition(node),
        ])  # fmt: skip
    if len(rows) == 1:
        return []
    lines = _columns(rows)
    if not wide:
        lines = [line if len(line) <= width else line[: max(width - 3, 20)] + "..." for line in lines]
    return lines


def render_table(view: ClusterReport, *, wide: bool = False, width: int = 200) -> str:
    header = ["NODE", "INSTANCE", "FREE DEV", "LARGEST", "FREE CORES", "LARGEST", "AGE", "STATUS", "MAP"]
    if wide:
        header.append("HOLDERS")
    rows = [header]
    for node in view.nodes:
        row = _node_row(node)
        if wide:
            row.append(_holders(node))
        rows.append(row)
    out = [_summary(view), ""]
    out += _columns(rows) if view.nodes else ["No Neuron nodes found."]
    out += ["", LEGEND]
    health = _health_rows(view, wide, width, view.taken_at)
    if health:
        out += ["", *health]
    if view.pending:
        out += ["", *_pending_rows(view, wide, width)]
    out += [f"warning: {w}" for w in view.warnings]
    return "\n".join(out) + "\n"


# ---- JSON ---------------------------------------------------------------------------------------------


def _time(moment: datetime | None) -> str | None:
    return format_time(moment) if moment else None  # the annotations' own format


def _health_json(node: NodeReport) -> dict[str, Any] | None:
    if node.health is None:
        return None
    return {
        "status": node.health.status,
        "reason": node.health.reason,
        "message": node.health.message,
        "lastTransitionTime": _time(node.health.since),
    }


def node_json(node: NodeReport) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": node.name,
        "instanceType": node.instance_type,
        "ready": node.ready,
        "schedulable": node.schedulable,
        "status": _status(node),
        "mode": node.mode,
        "healthCondition": _health_json(node),
    }
    if node.error:
        doc["error"] = node.error
        return doc
    doc.update(
        {
            "topologyKnown": node.topology_known,
            "devices": node.device_count,
            "coresPerDevice": node.cores_per_device,
            "freeDevices": encode_ranges(node.free_devices),
            "freeCores": encode_ranges(node.free_cores),
            "unhealthyDevices": encode_ranges(node.unhealthy_devices),
            "largestFreeBlock": {"neuron": node.largest_free_devices, "neuroncore": node.largest_free_cores},
            "observedAt": _time(node.observed_at),
            "ageSeconds": None if node.age_seconds is None else round(node.age_seconds, 3),
            "map": device_map(node),
            "deviceMap": [
                {"device": c.device, "state": c.status.value, "pods": list(c.pods), "freeCores": c.free_cores}
                for c in node.devices
            ],
            "pods": list(node.pods),
        }
    )
    return doc


def pending_json(pod: PendingReport) -> dict[str, Any]:
    return {
        "namespace": pod.namespace,
        "name": pod.name,
        "schedulerName": pod.scheduler_name,
        "requests": dict(sorted(pod.requests.items())),
        "createdAt": _time(pod.created_at),
        "reason": pod.reason,
        "message": pod.message,
        "warnings": list(pod.warnings),
    }


def render_json(view: ClusterReport) -> str:
    doc = {
        "takenAt": _time(view.taken_at),
        "nodes": [node_json(n) for n in view.nodes],
        "pending": [pending_json(p) for p in view.pending],
        "warnings": list(view.warnings),
    }
    return json.dumps(doc, indent=2) + "\n"
