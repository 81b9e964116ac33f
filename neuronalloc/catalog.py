"""Every Neuron instance type, with its device count, cores per device and block rule.

Sources and the date they were checked are in the README's topology table; rows marked "inferred" there rest on
AWS's driver and chart rather than on a published table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from neuronalloc.topology import Rule, Topology

UNKNOWN_INSTANCE_TYPE = "unknown"

# trn2 and trn3 have 8 physical cores per device; the logical-core setting (LNC) groups them in ones or twos.
# AWS documents LNC=2 as trn2's default; for trn3 it documents LNC 1|2 "as Trainium2" but no default, and every
# AWS example runs LNC=2, so 2 is inferred.
TRN2_PHYSICAL_CORES = 8
TRN2_DEFAULT_LNC = 2
TRN3_PHYSICAL_CORES = 8
TRN3_DEFAULT_LNC = 2
LOGICAL_NC_SETTINGS = (1, 2)
# Families whose core count follows the node's LNC setting, with their physical cores per device.
LNC_FAMILIES: Mapping[str, int] = MappingProxyType({"trn2": TRN2_PHYSICAL_CORES, "trn3": TRN3_PHYSICAL_CORES})

# Trn3's devices connect all-to-all through NeuronSwitch; AWS publishes no block rule for them (its scheduler
# and DRA pages do not mention Trn3). Consecutive IDs is the rule every Neuron runtime accepts, so that is the
# safe choice. Should AWS publish one (e.g. aligned sizes), this line is the whole change.
TRN3_RULE = Rule.WINDOW

# SageMaker HyperPod nodes carry the EC2 type behind this prefix ("ml.trn1.32xlarge").
SAGEMAKER_PREFIX = "ml."


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
    trn3_cores = TRN3_PHYSICAL_CORES // TRN3_DEFAULT_LNC
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
        InstanceType("trn2.3xlarge", "trn2", 1, trn2_cores, aligned),
        InstanceType("trn2.48xlarge", "trn2", 16, trn2_cores, aligned),
        InstanceType("trn2u.48xlarge", "trn2", 16, trn2_cores, aligned),
        InstanceType("trn3pd98.3xlarge", "trn3", 1, trn3_cores, TRN3_RULE),
        InstanceType("trn3e.24xlarge", "trn3", 4, trn3_cores, TRN3_RULE),
        InstanceType("trn3.48xlarge", "trn3", 16, trn3_cores, TRN3_RULE),
    ]


CATALOG: Mapping[str, InstanceType] = MappingProxyType({row.name: row for row in _rows()})


def lookup_instance_type(name: str | None) -> InstanceType | None:
    """The catalog row of an instance type; a SageMaker `ml.` type resolves to its EC2 row."""
    if not name:
        return None
    key = name.strip().lower()
    row = CATALOG.get(key)
    if row is None and key.startswith(SAGEMAKER_PREFIX):
        row = CATALOG.get(key.removeprefix(SAGEMAKER_PREFIX))
    return row


def _core_counts(row: InstanceType) -> tuple[int, ...]:
    """Core counts a node of this type may report: trn2/trn3 report physical or logical cores, per their LNC."""
    physical = LNC_FAMILIES.get(row.family)
    if physical is not None:
        return tuple(physical // lnc for lnc in LOGICAL_NC_SETTINGS)
    return (row.cores_per_device,)


def guess_instance_type(device_count: int, cores_per_device: int | None = None) -> InstanceType | None:
    """The catalog row that a device count (and core count, if known) singles out, else None.

    Only an unambiguous match is returned: the block rule is what matters, and 16 devices of 4 cores could be
    inf1.24xlarge (window) or trn2 at LNC=2 (aligned); 16 devices of 8 cores, trn2 (aligned) or trn3 (window).
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

    A catalog type keeps its rule and core count (trn2's and trn3's core count follows `logical_nc`);
    `cores_per_device` only fills in for a type the catalog does not know. An unknown type becomes a linear
    chain of the devices found: the safest rule, since consecutive IDs are what every Neuron runtime accepts.
    A SageMaker `ml.` type keeps its own name and takes its EC2 row's rule.
    """
    row = lookup_instance_type(instance_type)
    name = (instance_type or UNKNOWN_INSTANCE_TYPE).strip().lower() or UNKNOWN_INSTANCE_TYPE
    if row is None:
        return Topology(
            instance_type=name,
            family="unknown",
            device_count=device_count,
            cores_per_device=cores_per_device or 1,
            rule=Rule.WINDOW,
            known=False,
        )
    cores = row.cores_per_device
    physical = LNC_FAMILIES.get(row.family)
    if physical is not None and logical_nc is not None:
        if logical_nc not in LOGICAL_NC_SETTINGS:
            raise ValueError(f"{row.family} logical NeuronCore setting must be 1 or 2, got {logical_nc}")
        cores = physical // logical_nc
    return Topology(name, row.family, device_count, cores, row.rule)


def with_cores_per_device(topology: Topology, cores_per_device: int) -> Topology:
    """The same topology with another core count, as a node reports it (trn2/trn3 under a non-default LNC)."""
    if cores_per_device == topology.cores_per_device:
        return topology
    return replace(topology, cores_per_device=cores_per_device)
