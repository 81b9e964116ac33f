"""What the driver has prepared, on disk: one record per claim in its data directory, one CDI spec per claim.

The records are the driver's checkpoint (the data directory lives under kubelet's root, so it survives restarts
and reboots as kubelet's own DRA checkpoint does); the CDI specs are derived from them and rewritten at every
start (a reboot empties /var/run/cdi while kubelet still counts the claims as prepared). Both are written to a
temporary name and renamed, so a crash leaves the old file or the new one, never half of one.

A record that cannot be read (garbled, or too large) is an *unknown holding*: the driver cannot tell what
hardware it holds, so it refuses to prepare anything new until kubelet unprepares that claim (fail closed). Its
CDI spec is left alone: a container may be starting with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuronalloc import Resource, Topology, decode_ranges, encode_ranges
from neuronalloc.draslices import DraLayoutError, Grant, grant_envs, grant_of, parse_block_name
from neuronalloc.ranges import RangeListError
from neuronalloc.text import shorten
from plugin.dra.claims import Allocation, ClaimError, ClaimRef, Result, check_ref

CDI_VENDOR = "neuron-contig.io"
CDI_CLASS = "neuron"
CDI_KIND = f"{CDI_VENDOR}/{CDI_CLASS}"
CDI_VERSION = "0.6.0"  # the first with spec annotations
CONTAINER_DEVICE_DIR = "/dev"
RECORD_VERSION = 1
MAX_RECORD_BYTES = 64 * 1024
MAX_RECORDS = 1024  # far above what a 16-device node can hold (every core of trn2 at LNC=1 is 128)
_SPEC_FILE = re.compile(r"neuron-contig\.io-claim_([A-Za-z0-9-]{1,128})\.json")
_RECORD_FILE = re.compile(r"([A-Za-z0-9-]{1,128})\.json")
ANNOTATION_CLAIM = "neuron-contig.io/claim"
ANNOTATION_BLOCK = "neuron-contig.io/block"


@dataclass(frozen=True)
class PreparedClaim:
    allocation: Allocation

    @property
    def uid(self) -> str:
        return self.allocation.claim.uid

    @property
    def grant(self) -> Grant:
        return self.allocation.grant

    @property
    def cdi_id(self) -> str:
        return cdi_device_id(self.uid)


def cdi_device_id(uid: str) -> str:
    return f"{CDI_KIND}={uid}"


def cdi_spec(prepared: PreparedClaim, device_root: Path) -> dict[str, Any]:
    """The CDI spec of one claim: one device, named after the claim, with exactly what `Allocate` gives."""
    grant = prepared.grant
    claim = prepared.allocation.claim
    return {
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "annotations": {
            ANNOTATION_CLAIM: claim.key,
            ANNOTATION_BLOCK: f"{grant.resource.short}:{encode_ranges(grant.ids)}",
        },
        "devices": [
            {
                "name": claim.uid,
                "containerEdits": {
                    "deviceNodes": [
                        {
                            "path": f"{CONTAINER_DEVICE_DIR}/neuron{d}",
                            "hostPath": str(device_root / f"neuron{d}"),
                            "permissions": "rw",
                        }
                        for d in grant.devices
                    ],
                    "env": [f"{k}={v}" for k, v in grant_envs(grant).items()],
                },
            }
        ],
    }


def _write_atomic(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(doc, file, separators=(",", ":"), sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # the container runtime reads CDI specs
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _record(prepared: PreparedClaim) -> dict[str, Any]:
    alloc = prepared.allocation
    return {
        "version": RECORD_VERSION,
        "uid": alloc.claim.uid,
        "namespace": alloc.claim.namespace,
        "name": alloc.claim.name,
        "resource": alloc.grant.resource.short,
        "ids": encode_ranges(alloc.grant.ids),
        "results": [{"request": r.request, "device": r.block.name} for r in alloc.results],
    }


def _read_record(path: Path, topo: Topology) -> PreparedClaim:
    """A record written by `Store.add`, checked as untrusted input. Raises ClaimError."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_RECORD_BYTES + 1)
    except OSError as error:
        raise ClaimError(f"{path.name}: unreadable ({error.strerror})") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise ClaimError(f"{path.name}: larger than {MAX_RECORD_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ClaimError(f"{path.name}: not JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != RECORD_VERSION:
        raise ClaimError(f"{path.name}: not a version-{RECORD_VERSION} claim record")
    ref = check_ref(doc.get("namespace"), doc.get("name"), doc.get("uid"))
    results = doc.get("results")
    if not isinstance(results, list) or not 0 < len(results) <= 32:
        raise ClaimError(f"{path.name}: no results")
    parsed = []
    for entry in results:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, str) or not 0 < len(request) <= 127:
            raise ClaimError(f"{path.name}: a result without a request name")
        try:
            parsed.append(Result(request, parse_block_name(entry.get("device"), topo)))
        except DraLayoutError as error:
            raise ClaimError(f"{path.name}: {error}") from None
    try:
        grant = grant_of(topo, [r.block for r in parsed])
        recorded = decode_ranges(doc.get("ids", ""), limit=topo.core_count)
    except (DraLayoutError, RangeListError) as error:
        raise ClaimError(shorten(f"{path.name}: {error}", 600)) from None
    if recorded != frozenset(grant.ids) or doc.get("resource") != grant.resource.short:
        raise ClaimError(f"{path.name}: the recorded block does not match its devices")
    return PreparedClaim(Allocation(ref, tuple(parsed), grant))


class Store:
    def __init__(self, data_dir: Path, cdi_root: Path, device_root: Path, topo: Topology) -> None:
        self.records = data_dir / "claims"
        self.cdi_root = cdi_root
        self.device_root = device_root
        self.topo = topo
        self.claims: dict[str, PreparedClaim] = {}
        self.unknown: dict[str, str] = {}  # uid -> why its record cannot be read

    def record_path(self, uid: str) -> Path:
        return self.records / f"{uid}.json"

    def spec_path(self, uid: str) -> Path:
        return self.cdi_root / f"{CDI_VENDOR}-claim_{uid}.json"

    def load(self) -> list[str]:
        """Read every record and rewrite the CDI specs from them; remove our specs that no record backs.
        Returns the problems found (unknown holdings), for the log."""
        self.records.mkdir(parents=True, exist_ok=True)
        self.cdi_root.mkdir(parents=True, exist_ok=True)
        problems = []
        for path in self._listing(self.records, _RECORD_FILE):
            uid = _RECORD_FILE.fullmatch(path.name).group(1)  # type: ignore[union-attr]
            try:
                prepared = _read_record(path, self.topo)
                if prepared.uid != uid:
                    raise ClaimError(f"{path.name}: records claim {prepared.uid}")
            except ClaimError as error:
                self.unknown[uid] = str(error)
                problems.append(str(error))
                continue
            self.claims[uid] = prepared
            _write_atomic(self.spec_path(uid), cdi_spec(prepared, self.device_root))
        for path in self._listing(self.cdi_root, _SPEC_FILE):
            uid = _SPEC_FILE.fullmatch(path.name).group(1)  # type: ignore[union-attr]
            if uid not in self.claims and uid not in self.unknown:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return problems

    @staticmethod
    def _listing(directory: Path, pattern: re.Pattern[str]) -> Iterator[Path]:
        count = 0
        with os.scandir(directory) as entries:
            for entry in entries:
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    count += 1
                    if count > MAX_RECORDS:
                        raise ClaimError(f"{directory}: more than {MAX_RECORDS} claim files")
                    yield Path(entry.path)

    def add(self, allocation: Allocation) -> PreparedClaim:
        prepared = PreparedClaim(allocation)
        _write_atomic(self.record_path(prepared.uid), _record(prepared))
        _write_atomic(self.spec_path(prepared.uid), cdi_spec(prepared, self.device_root))
        self.claims[prepared.uid] = prepared
        return prepared

    def remove(self, uid: str) -> bool:
        """Forget a claim; True if there was anything to forget. Idempotent."""
        known = self.claims.pop(uid, None) is not None or self.unknown.pop(uid, None) is not None
        for path in (self.spec_path(uid), self.record_path(uid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                known = True
        return known

    def in_use(self) -> tuple[frozenset[int], frozenset[int]]:
        """(devices held whole, cores held) by the prepared claims."""
        devices: set[int] = set()
        cores: set[int] = set()
        for prepared in self.claims.values():
            grant = prepared.grant
            (devices if grant.resource is Resource.NEURON else cores).update(grant.ids)
        return frozenset(devices), frozenset(cores)

    def holder_of(self, grant: Grant) -> ClaimRef | None:
        """A prepared claim that shares hardware with `grant` (devices, or a core of a device), if any."""
        want_devices = set(grant.devices)
        want_cores = set(grant.cores)
        for prepared in self.claims.values():
            held = prepared.grant
            if want_devices & set(held.devices) and (
                grant.resource is Resource.NEURON or held.resource is Resource.NEURON or want_cores & set(held.cores)
            ):
                return prepared.allocation.claim
        return None

    def refs(self) -> Iterator[ClaimRef]:
        for prepared in self.claims.values():
            yield prepared.allocation.claim
