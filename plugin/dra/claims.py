"""Reading a ResourceClaim's allocation: which of this node's blocks the scheduler gave it, and for which request.

Pure and bounded: the claim is JSON from the API server, read here as untrusted input. Anything that is not an
allocation of this driver's blocks on this node is a `ClaimError` whose message names the claim and the field;
nothing else is raised.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neuronalloc import Topology
from neuronalloc.draslices import DRIVER, Block, DraLayoutError, Grant, grant_of, parse_block_name
from neuronalloc.text import quote, shorten

MAX_RESULTS = 32  # AllocationResultsMaxSize
MAX_UID = 128
MAX_NAMESPACE = 63
MAX_NAME = 253
MAX_REQUEST_NAME = 127  # a request name, or "request/subrequest"
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
_DNS = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


class ClaimError(ValueError):
    """The claim cannot be prepared on this node; the message says why (at most 600 characters)."""


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Result:
    request: str
    block: Block


@dataclass(frozen=True)
class Allocation:
    """Our part of one claim's allocation on this node."""

    claim: ClaimRef
    results: tuple[Result, ...]
    grant: Grant


def check_ref(namespace: object, name: object, uid: object) -> ClaimRef:
    """A claim reference as kubelet sends it, checked before it is used in a path or a file name."""
    if not isinstance(uid, str) or not _UID.fullmatch(uid):
        raise ClaimError(f"claim uid {quote(uid, 60)} is not a UID")
    if not isinstance(namespace, str) or len(namespace) > MAX_NAMESPACE or not _DNS.fullmatch(namespace):
        raise ClaimError(f"claim {uid}: namespace {quote(namespace, 80)} is not a namespace name")
    if not isinstance(name, str) or len(name) > MAX_NAME or not _DNS.fullmatch(name):
        raise ClaimError(f"claim {uid}: name {quote(name, 80)} is not an object name")
    return ClaimRef(namespace, name, uid)


def _field(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def read_allocation(doc: Any, ref: ClaimRef, topo: Topology, pool: str) -> Allocation:
    """This node's blocks in the claim `doc` (the API server's JSON for `ref`). Raises ClaimError."""
    where = f"claim {ref.key} ({ref.uid})"
    if not isinstance(doc, Mapping):
        raise ClaimError(f"{where}: the API server's answer is not an object")
    uid = _field(doc, "metadata", "uid")
    if uid != ref.uid:
        raise ClaimError(f"{where}: the claim of that name now has uid {quote(uid, 60)}: it was deleted and re-created")
    if _field(doc, "metadata", "deletionTimestamp") is not None and _field(doc, "status", "reservedFor") in (None, []):
        raise ClaimError(f"{where}: the claim is being deleted and reserved for no pod")
    results = _field(doc, "status", "allocation", "devices", "results")
    if results is None:
        raise ClaimError(f"{where}: not allocated yet (no status.allocation.devices.results)")
    if not isinstance(results, list):
        raise ClaimError(f"{where}: status.allocation.devices.results is not a list")
    if len(results) > MAX_RESULTS:
        raise ClaimError(f"{where}: {len(results)} allocation results, more than the API allows ({MAX_RESULTS})")
    ours: list[Result] = []
    for index, result in enumerate(results):
        if not isinstance(result, Mapping):
            raise ClaimError(f"{where}: allocation result {index} is not an object")
        if result.get("driver") != DRIVER:
            continue  # another driver's device: that driver prepares it
        if result.get("pool") != pool:
            raise ClaimError(
                f"{where}: result {index} is a device of pool {quote(result.get('pool'), 80)}, not of this node "
                f"({quote(pool, 80)})"
            )
        request = result.get("request")
        if not isinstance(request, str) or not 0 < len(request) <= MAX_REQUEST_NAME:
            raise ClaimError(f"{where}: result {index} has no valid request name")
        try:
            block = parse_block_name(result.get("device"), topo)
        except DraLayoutError as error:
            raise ClaimError(f"{where}: result {index}: {error}") from None
        ours.append(Result(request, block))
    if not ours:
        raise ClaimError(f"{where}: no device of driver {DRIVER} is allocated to it")
    try:
        grant = grant_of(topo, [r.block for r in ours])
    except DraLayoutError as error:
        raise ClaimError(shorten(f"{where}: {error}; the Neuron runtime accepts one contiguous block", 600)) from None
    return Allocation(ref, tuple(ours), grant)
