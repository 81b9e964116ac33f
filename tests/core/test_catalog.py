from __future__ import annotations

import pytest

from neuronalloc import CATALOG, Resource, Rule, guess_instance_type, lookup_instance_type, resolve_topology

# From reference/neuron-hardware.md: (devices, cores per device, rule)
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
    "trn2.48xlarge": (16, 4, Rule.ALIGNED),
    "trn2u.48xlarge": (16, 4, Rule.ALIGNED),
}


def test_catalog_matches_the_reference_table() -> None:
    assert {name: (r.devices, r.cores_per_device, r.rule) for name, r in CATALOG.items()} == EXPECTED


@pytest.mark.parametrize(("lnc", "cores"), [(None, 4), (2, 4), (1, 8)])
def test_trn2_cores_follow_the_logical_core_setting(lnc: int | None, cores: int) -> None:
    topo = resolve_topology("trn2.48xlarge", 16, logical_nc=lnc)
    assert topo.cores_per_device == cores
    assert topo.core_count == 16 * cores


def test_bad_logical_core_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="must be 1 or 2"):
        resolve_topology("trn2.48xlarge", 16, logical_nc=4)


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
        (16, 8, "trn2.48xlarge"),
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
