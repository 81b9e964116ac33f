"""GetPreferredAllocation and Allocate decisions, on top of neuronalloc and the plugin's node view.

No gRPC here: decisions are values or `AllocationRejected`, and server.py maps them to status codes.
Checks Allocate makes, in order (the first that fails is reported, by its name, `AllocationRejected.check`):
  0. too_many_ids     - more IDs than the node has units         -> INVALID_ARGUMENT
  1. unknown_id       - not a device/core of this node          -> INVALID_ARGUMENT
  2. duplicate_id     - the same ID twice                        -> INVALID_ARGUMENT
  3. block_rule       - not a contiguous/aligned block (neuronalloc.check_block) -> INVALID_ARGUMENT
  4. podresources_stale - no PodResources read, or none fresh: what is in use is unknown -> FAILED_PRECONDITION
  5. unhealthy        - on a device that is unhealthy now        -> FAILED_PRECONDITION
  6. shared_hardware  - on hardware held through another resource name -> FAILED_PRECONDITION
GetPreferredAllocation refuses on check 4 too: it must never pick from hardware it cannot see.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from neuronalloc import Refusal, Resource, Topology, allocate, check_block, encode_ranges, hardware_of
from neuronalloc.text import MAX_MESSAGE, MAX_QUOTE, shorten
from plugin.nodeview import NodeView
from plugin.podresources import parse_unit_id

CONTAINER_DEVICE_DIR = "/dev"
SHOWN_IDS = 5  # offending IDs quoted in a message; the rest are counted


class Rejection(StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    FAILED_PRECONDITION = "failed_precondition"


class AllocationRejected(Exception):
    """A request this node must refuse; `check` names the check that failed (a code such as "unknown_id"),
    `message` names the IDs and, for a block, the instance type's rule.

    Both are bounded here, whatever the request held: the message travels back as a gRPC status, whose
    metadata kubelet's gRPC caps (an oversized one turns into RESOURCE_EXHAUSTED), and into the logs."""

    def __init__(self, kind: Rejection, check: str, ids: str, message: str) -> None:
        message = shorten(message, MAX_MESSAGE)
        super().__init__(message)
        self.kind = kind
        self.check = check
        self.ids = shorten(ids, MAX_QUOTE)
        self.message = message


@dataclass(frozen=True)
class Grant:
    """What a container gets for a valid block."""

    devices: tuple[int, ...]
    cores: tuple[int, ...]
    device_paths: tuple[tuple[str, str], ...]  # (host path, container path)

    @property
    def envs(self) -> dict[str, str]:
        return {
            "NEURON_RT_VISIBLE_CORES": encode_ranges(self.cores),
            "AWS_NEURON_VISIBLE_DEVICES": encode_ranges(self.devices),
        }


def show_ids(raw_ids: Sequence[str]) -> str:
    """Up to SHOWN_IDS of `raw_ids`, each shortened, and how many more there are: "1,x,999...(4980 chars cut)...9"."""
    shown = ",".join(shorten(raw, 40) for raw in raw_ids[:SHOWN_IDS])
    return shown if len(raw_ids) <= SHOWN_IDS else f"{shown},... ({len(raw_ids) - SHOWN_IDS} more)"


def check_count(topology: Topology, resource: Resource, raw_ids: Sequence[str], what: str = "IDs") -> None:
    """More IDs than the node has units can only be wrong; refuse before reading any of them."""
    limit = topology.unit_count(resource)
    if len(raw_ids) > limit:
        raise AllocationRejected(
            Rejection.INVALID_ARGUMENT,
            "too_many_ids",
            show_ids(raw_ids),
            f"{len(raw_ids)} {resource.value} {what} in one request; this node has {limit} {resource.units}",
        )


def parse_ids(topology: Topology, resource: Resource, raw_ids: Sequence[str]) -> tuple[int, ...]:
    """Kubelet's ID strings as sorted ints. Raises AllocationRejected for too many, unknown or duplicate IDs."""
    check_count(topology, resource, raw_ids)
    limit = topology.unit_count(resource)
    parsed = [parse_unit_id(raw, limit) for raw in raw_ids]
    unknown = [raw for raw, unit in zip(raw_ids, parsed, strict=True) if unit is None]
    if unknown:
        shown = show_ids(unknown)
        raise AllocationRejected(
            Rejection.INVALID_ARGUMENT,
            "unknown_id",
            shown,
            f"unknown {resource.value} IDs [{shown}]: this node has {resource.units} 0-{limit - 1}"
            if limit
            else f"unknown {resource.value} IDs [{shown}]: node has none",
        )
    ids = [unit for unit in parsed if unit is not None]  # drops nothing (unknowns raised above); narrows the type
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise AllocationRejected(
            Rejection.INVALID_ARGUMENT,
            "duplicate_id",
            encode_ranges(duplicates),
            f"{resource.value} IDs [{encode_ranges(duplicates)}] are requested more than once",
        )
    return tuple(sorted(ids))


def require_fresh(view: NodeView, resource: Resource, ids: str) -> None:
    """Refuse when the view cannot say what is in use: "never read" is not "nothing used"."""
    problem = view.podresources_problem()
    if problem is not None:
        raise AllocationRejected(
            Rejection.FAILED_PRECONDITION,
            "podresources_stale",
            ids,
            f"{resource.value} [{ids}]: refused because {problem}, so the hardware in use is unknown; "
            "kubelet retries the admission",
        )


def validate(view: NodeView, resource: Resource, raw_ids: Sequence[str]) -> tuple[int, ...]:
    """The block, if Allocate may grant it; else AllocationRejected naming the first check that failed."""
    topology = view.topology
    if not raw_ids:
        raise AllocationRejected(
            Rejection.INVALID_ARGUMENT, "empty_request", "", f"empty {resource.value} request: no IDs given"
        )
    ids = parse_ids(topology, resource, raw_ids)
    refusal = check_block(topology, resource, ids)
    if refusal is not None:
        raise AllocationRejected(
            Rejection.INVALID_ARGUMENT, "block_rule", encode_ranges(ids), f"[{encode_ranges(ids)}]: {refusal}"
        )
    require_fresh(view, resource, encode_ranges(ids))
    sick = sorted(d for d in hardware_of(topology, resource, ids).devices if not view.is_healthy(d))
    if sick:
        raise AllocationRejected(
            Rejection.FAILED_PRECONDITION,
            "unhealthy",
            encode_ranges(ids),
            f"{resource.value} [{encode_ranges(ids)}] uses unhealthy devices [{encode_ranges(sick)}] "
            f"({'; '.join(f'{d}: {view.unhealthy[d]}' for d in sick)})",
        )
    taken = sorted(set(ids) - view.usable(resource))
    if taken:
        others = " or ".join(other.value for other in Resource if other is not resource)
        raise AllocationRejected(
            Rejection.FAILED_PRECONDITION,
            "shared_hardware",
            encode_ranges(ids),
            f"{resource.value} [{encode_ranges(ids)}]: [{encode_ranges(taken)}] share hardware with "
            f"{others} in use (a device with a core in use is not free as a device, and the reverse)",
        )
    return ids


def grant(topology: Topology, device_root: Path, resource: Resource, ids: Sequence[int]) -> Grant:
    held = hardware_of(topology, resource, ids)
    devices, cores = tuple(sorted(held.devices)), tuple(sorted(held.cores))
    paths = tuple((str(device_root / f"neuron{d}"), f"{CONTAINER_DEVICE_DIR}/neuron{d}") for d in devices)
    return Grant(devices, cores, paths)


def preferred(
    view: NodeView,
    resource: Resource,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> tuple[int, ...]:
    """The allocator's block within kubelet's `available` and this node's own view of usable hardware.

    Kubelet fills any shortfall in arbitrary order, which would break contiguity, so a request that cannot
    get a block is refused here (AllocationRejected), before kubelet commits to anything.
    """
    topology = view.topology
    limit = topology.unit_count(resource)
    check_count(topology, resource, available, "IDs offered")
    offered = {u for u in (parse_unit_id(raw, limit) for raw in available) if u is not None}
    required = frozenset(parse_ids(topology, resource, must_include))
    if size <= 0:
        raise AllocationRejected(
            Rejection.INVALID_ARGUMENT, "size", "", f"allocation_size {size} for {resource.value} must be > 0"
        )
    require_fresh(view, resource, f"size {size}")
    free = (offered & view.usable(resource)) | required
    chosen = allocate(topology, resource, free, size, required)
    if isinstance(chosen, Refusal):
        kind = Rejection.INVALID_ARGUMENT if chosen.kind != "no_block" else Rejection.FAILED_PRECONDITION
        raise AllocationRejected(kind, chosen.kind, encode_ranges(required), chosen.message)
    return chosen
