"""Every Neuron instance type, with its device count, cores per device and block rule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from neuronalloc.topology import Rule, Topology

UNKNOWN_INSTANCE_TYPE = "unknown"

# trn2 has 8 physical cores per device; the logical-core setting (LNC) groups them, LNC=2 being the default.
TRN2_PHYSICAL_CORES = 8
TRN2_DEFAULT_LNC = 2


@dataclass(frozen=True)
class InstanceType:
    name: str
    family: str
    devices: int
    cores_per_device: int
    rule: Rule


def _rows() -> list[InstanceType]:
    window, aligned = Rule.WINDOW, Rule.ALIGNED
    trn2_cores = TRN2_PHYSICAL_CORES // TRN2_DEFAULT_LNC
    return [
        InstanceType("inf1.xlarge", "inf1", 1, 4, window),
        InstanceType("inf1.2xlarge", "inf1", 1, 4, window),
        InstanceType("inf1.6xlarge", "inf1", 4, 4, window),
        InstanceType("inf1.24xlarge", "inf1", 16, 4, window),
        InstanceType("inf2.xlarge", "inf2", 1, 2, window),
        InstanceType("inf2.8xlarge", "inf2", 1, 2, window),
        InstanceType("inf2.24xlarge", "inf2", 6, 2, window),
        InstanceType("inf2.48xlarge", "inf2", 12, 2, window),
        InstanceType("trn1.2xlarge", "trn1", 1, 2, aligned),
        InstanceType("trn1.32xlarge", "trn1", 16, 2, aligned),
        InstanceType("trn1n.32xlarge", "trn1n", 16, 2, aligned),
        InstanceType("trn2.48xlarge", "trn2", 16, trn2_cores, aligned),
        InstanceType("trn2u.48xlarge", "trn2", 16, trn2_cores, aligned),
    ]


CATALOG: Mapping[str, InstanceType] = MappingProxyType({row.name: row for row in _rows()})


def lookup_instance_type(name: str | None) -> InstanceType | None:
    return CATALOG.get(name.strip().lower()) if name else None


def _core_counts(row: InstanceType) -> tuple[int, ...]:
    """Core counts a node of this type may report: trn2 reports physical or logical cores, per its LNC."""
    if row.family == "trn2":
        return tuple(TRN2_PHYSICAL_CORES // lnc for lnc in (1, 2))
    return (row.cores_per_device,)


def guess_instance_type(device_count: int, cores_per_device: int | None = None) -> InstanceType | None:
    """The catalog row that a device count (and core count, if known) singles out, else None.

    Only an unambiguous match is returned: the block rule is what matters, and 16 devices of 4 cores could be
    inf1.24xlarge (window) or trn2 at LNC=2 (aligned).
    """
    matches = [
        row
        for row in CATALOG.values()
        if row.devices == device_count and cores_per_device in (None, *_core_counts(row))
    ]
    if device_count == 1 and matches:
        return matches[0]  # one device: every rule accepts the only block there is
    rules = {(row.rule, row.cores_per_device) for row in matches}
    return matches[0] if len(rules) == 1 else None


def resolve_topology(
    instance_type: str | None,
    device_count: int,
    *,
    cores_per_device: int | None = None,
    logical_nc: int | None = None,
) -> Topology:
    """The topology of a node with `device_count` devices.

    A catalog type keeps its rule and core count (trn2's core count follows `logical_nc`); `cores_per_device`
    only fills in for a type the catalog does not know. An unknown type becomes a linear chain of the devices
    found: the safest rule, since consecutive IDs are what every Neuron runtime accepts.
    """
    row = lookup_instance_type(instance_type)
    if row is None:
        return Topology(
            instance_type=(instance_type or UNKNOWN_INSTANCE_TYPE).strip().lower() or UNKNOWN_INSTANCE_TYPE,
            family="unknown",
            device_count=device_count,
            cores_per_device=cores_per_device or 1,
            rule=Rule.WINDOW,
            known=False,
        )
    cores = row.cores_per_device
    if row.family == "trn2" and logical_nc is not None:
        if logical_nc not in (1, 2):
            raise ValueError(f"trn2 logical NeuronCore setting must be 1 or 2, got {logical_nc}")
        cores = TRN2_PHYSICAL_CORES // logical_nc
    return Topology(row.name, row.family, device_count, cores, row.rule)


def with_cores_per_device(topology: Topology, cores_per_device: int) -> Topology:
    """The same topology with another core count, as a node reports it (trn2 under a non-default LNC)."""
    if cores_per_device == topology.cores_per_device:
        return topology
    return replace(topology, cores_per_device=cores_per_device)
