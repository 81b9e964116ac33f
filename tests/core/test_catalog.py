from __future__ import annotations

import pytest

from neuronalloc import (
    CATALOG,
    Resource,
    Rule,
    allocate,
    check_block,
    decode_node_state,
    guess_instance_type,
    lookup_instance_type,
    resolve_topology,
)
from neuronalloc.catalog import TRN3_RULE

# From reference/neuron-hardware.md and AWS's Neuron docs, driver and chart as checked 2026-11-28 (README's
# topology table): (devices, cores per device at the default LNC, rule)
EXPECTED = {
    "inf1.xlarge": (1, 4, Rule.WINDOW),
    "inf1.2xlarge": (1, 4, Rule.WINDOW),
    "inf1.6xlarge": (4, 4, Rule.WINDOW),
    "inf1.24xlarge": (16, 4, Rule.WINDOW),
    "inf2.xlarge": (1, 2, Rule.WINDOW),
    "inf2.8xlarge": (1, 2, Rule.WINDOW),
    "inf2.24xlarge": (6, 2, Rule.WINDOW),
    "inf2.48xlarge": (12, 2, Rule.WINDOW),
    "trn1.2xlarge": (1, 2, Rule.ALIGNED),
    "trn1.32xlarge": (16, 2, Rule.ALIGNED),
    "trn1n.32xlarge": (16, 2, Rule.ALIGNED),
    "trn2.3xlarge": (1, 4, Rule.ALIGNED),
    "trn2.48xlarge": (16, 4, Rule.ALIGNED),
    "trn2u.48xlarge": (16, 4, Rule.ALIGNED),
    "trn3pd98.3xlarge": (1, 4, Rule.WINDOW),
    "trn3e.24xlarge": (4, 4, Rule.WINDOW),
    "trn3.48xlarge": (16, 4, Rule.WINDOW),
}


def test_catalog_matches_the_reference_table() -> None:
    assert {name: (r.devices, r.cores_per_device, r.rule) for name, r in CATALOG.items()} == EXPECTED


@pytest.mark.parametrize("name", ["trn2.48xlarge", "trn2.3xlarge", "trn3.48xlarge", "trn3e.24xlarge"])
@pytest.mark.parametrize(("lnc", "cores"), [(None, 4), (2, 4), (1, 8)])
def test_trn2_and_trn3_cores_follow_the_logical_core_setting(name: str, lnc: int | None, cores: int) -> None:
    devices = CATALOG[name].devices
    topo = resolve_topology(name, devices, logical_nc=lnc)
    assert topo.cores_per_device == cores
    assert topo.core_count == devices * cores


@pytest.mark.parametrize("name", ["trn2.48xlarge", "trn3.48xlarge"])
def test_bad_logical_core_setting_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must be 1 or 2"):
        resolve_topology(name, 16, logical_nc=4)


def test_logical_core_setting_does_not_touch_fixed_core_families() -> None:
    assert resolve_topology("trn1.32xlarge", 16, logical_nc=1).cores_per_device == 2
    assert resolve_topology("inf2.48xlarge", 12, logical_nc=1).cores_per_device == 2


def test_trn3_block_rule_is_the_one_named_constant() -> None:
    """No published Trn3 block rule: every Trn3 row takes TRN3_RULE, consecutive IDs (the safe rule)."""
    assert TRN3_RULE is Rule.WINDOW
    trn3 = [row for row in CATALOG.values() if row.family == "trn3"]
    assert trn3 and all(row.rule is TRN3_RULE for row in trn3)
    topo = resolve_topology("trn3.48xlarge", 16)
    assert check_block(topo, Resource.NEURON, [1, 2, 3]) is None  # any consecutive run
    assert check_block(topo, Resource.NEURON, [0, 2]) is not None  # never a gap
    assert allocate(topo, Resource.NEURON, frozenset(range(16)), 5) == (0, 1, 2, 3, 4)


@pytest.mark.parametrize(
    "name",
    ["ml.trn1.32xlarge", "ml.trn1n.32xlarge", "ml.trn1.2xlarge", "ml.inf2.48xlarge", "ml.inf2.xlarge",
     "ml.trn2.48xlarge", "ml.trn2.3xlarge", " ML.Trn1.32xlarge "],
)  # fmt: skip
def test_sagemaker_types_resolve_to_their_ec2_rows(name: str) -> None:
    row = lookup_instance_type(name)
    assert row is CATALOG[name.strip().lower().removeprefix("ml.")]
    topo = resolve_topology(name, row.devices)
    assert topo.known and topo.rule is row.rule and topo.family == row.family
    assert topo.instance_type == name.strip().lower()  # the node's own name, as operators see it
    assert lookup_instance_type("ml.p4d.24xlarge") is None
    assert lookup_instance_type("ml.") is None


def test_ml_trn1_32xlarge_node_gets_the_aligned_rule() -> None:
    """An ml.trn1.32xlarge node used to fall back to the linear chain and could hand out a torus-breaking block."""
    topo = resolve_topology("ml.trn1.32xlarge", 16)
    assert topo.rule is Rule.ALIGNED
    assert "1, 4, 8 or 16 devices starting at a multiple of its size" in topo.describe_rule(Resource.NEURON)
    assert check_block(topo, Resource.NEURON, [2, 3, 4, 5]) is not None  # consecutive, but not a torus row
    assert check_block(topo, Resource.NEURON, [4, 5, 6, 7]) is None
    refused = allocate(topo, Resource.NEURON, frozenset(range(16)), 3)
    assert not isinstance(refused, tuple) and refused.kind == "unresolvable"
    # Half the node used from device 1 on: a window would offer 4 consecutive devices from 9, the torus only 12-15.
    assert allocate(topo, Resource.NEURON, frozenset({0, *range(9, 16)}), 4) == (12, 13, 14, 15)


def test_ml_type_in_published_state_reads_back_with_its_rule() -> None:
    state = decode_node_state(
        {
            "neuron-contig.io/instance-type": "ml.trn1.32xlarge",
            "neuron-contig.io/devices": "16",
            "neuron-contig.io/cores-per-device": "2",
            "neuron-contig.io/free-devices": "0-15",
            "neuron-contig.io/free-cores": "0-31",
            "neuron-contig.io/observed-at": "2026-11-28T11:00:00Z",
        }
    )
    assert state.topology.known and state.topology.rule is Rule.ALIGNED


def test_lookup_is_case_and_space_tolerant() -> None:
    assert lookup_instance_type(" Inf1.6xlarge ") is CATALOG["inf1.6xlarge"]
    assert lookup_instance_type("p4d.24xlarge") is None
    assert lookup_instance_type(None) is None


def test_unknown_type_falls_back_to_a_linear_chain() -> None:
    topo = resolve_topology("p4d.24xlarge", 8, cores_per_device=2)
    assert not topo.known
    assert topo.rule is Rule.WINDOW
    assert (topo.device_count, topo.cores_per_device) == (8, 2)
    assert "linear chain" in topo.describe_rule(Resource.NEURON)
    assert resolve_topology(None, 3).instance_type == "unknown"


def test_core_index_arithmetic() -> None:
    topo = resolve_topology("inf1.6xlarge", 4)
    assert list(topo.cores_of_device(2)) == [8, 9, 10, 11]
    assert topo.device_of_core(11) == 2
    assert topo.devices_of_cores([3, 4, 15]) == {0, 1, 3}


@pytest.mark.parametrize(
    ("devices", "cores", "expected"),
    [
        (4, None, "inf1.6xlarge"),
        (6, 2, "inf2.24xlarge"),
        (12, None, "inf2.48xlarge"),
        (16, 2, "trn1.32xlarge"),
        (16, 8, None),  # trn2 at LNC=1 (aligned) or trn3 at LNC=1 (window)
        (4, 8, "trn3e.24xlarge"),
        (1, 8, "trn2.3xlarge"),  # trn2.3xlarge or trn3pd98.3xlarge at LNC=1: one device, one block
        (16, 4, None),
        (16, None, None),
        (7, None, None),
    ],
)
def test_guess_only_when_unambiguous(devices: int, cores: int | None, expected: str | None) -> None:
    row = guess_instance_type(devices, cores)
    if expected is None:
        assert row is None
    else:
        assert row is not None and (row.rule, row.devices) == (CATALOG[expected].rule, CATALOG[expected].devices)
