"""Device discovery and topology resolution on fake /dev and sysfs trees."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from neuronalloc import Rule
from neuronalloc.nodestate import MAX_CORES_PER_DEVICE, MAX_DEVICES
from plugin.discovery import Discovery, DiscoveryError, TypeSource, discover, read_logical_nc, scan_devices
from tests.plugin.kubelet_stub import FakeNode


def warnings(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [
        getattr(r, "neuron_fields", {})
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.getMessage() == event
    ]


def run(node: FakeNode, flag: str = "", label: str | None = None) -> Discovery:
    return discover(
        device_root=node.dev,
        sysfs_root=node.sys,
        logical_nc_config=node.lnc_file,
        instance_type_flag=flag,
        node_label=label,
    )


def test_scan_finds_only_neuron_n_entries(tmp_path: Path) -> None:
    for name in ("neuron0", "neuron11", "neuron", "neuron_x", "neuron1a", "null", "nvidia0"):
        (tmp_path / name).write_text("")
    assert scan_devices(tmp_path) == {0, 11}
    assert scan_devices(tmp_path / "absent") == frozenset()


def test_scan_accepts_only_canonical_ascii_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # "neuron01" and non-ASCII digits (Arabic-Indic one, fullwidth two) once counted as devices 1 and 2.
    for name in ("neuron0", "neuron01", "neuron00", "neuron\u0661", "neuron\uff12", "neuron+3", "neuron 4"):
        (tmp_path / name).write_text("")
    assert scan_devices(tmp_path) == {0}
    [event] = warnings(caplog, "discovery.devices_ignored")
    assert event["reason"] == "not_canonical" and event["count"] == 4
    assert "neuron01" in event["names"] and "neuron00" in event["names"]


def test_known_type_bounds_the_device_count_and_names_the_extras(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = FakeNode.build(tmp_path, 1000, core_count=2)  # a /dev that lists 1,000 neuronN entries
    found = run(node, "inf2.48xlarge")
    assert found.topology.device_count == 12 and found.present == frozenset(range(12))
    [event] = warnings(caplog, "discovery.devices_ignored")
    assert event["reason"] == "beyond_instance_type" and event["count"] == 988
    assert event["names"] == "neuron12-999" and event["instance_type"] == "inf2.48xlarge"


def test_unknown_type_is_bounded_by_the_ceiling(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = FakeNode.build(tmp_path, 3, core_count=2)
    (node.dev / "neuron99999").write_text("")  # once made 100,000 devices
    found = run(node)
    assert found.topology.device_count == 3 and not found.topology.known
    [event] = warnings(caplog, "discovery.devices_ignored")
    assert event["reason"] == "beyond_ceiling" and event["names"] == "neuron99999" and event["limit"] == MAX_DEVICES
    many = FakeNode.build(tmp_path / "many", 100)
    assert run(many).topology.device_count == MAX_DEVICES


def test_only_an_out_of_bounds_device_is_no_device(tmp_path: Path) -> None:
    node = FakeNode.build(tmp_path, 0)
    (node.dev / "neuron99999").write_text("")
    with pytest.raises(DiscoveryError, match="no neuronN device under"):
        run(node)


@pytest.mark.parametrize(
    "text",
    ["99999999", "0", "-2", "9" * 5000, str(MAX_CORES_PER_DEVICE + 1)],
    ids=["huge", "zero", "negative", "5000-digits", "above-bound"],
)
def test_core_count_out_of_bounds_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    node = FakeNode.build(tmp_path, 3, core_count=2)
    for device in range(3):
        (node.sys / "class" / "neuron_device" / f"neuron{device}" / "core_count").write_text(text + "\n")
    found = run(node)  # unknown type: the core count would size the node (99999999 once took 1.28 GiB)
    assert found.topology.cores_per_device == 1 and found.topology.core_count == 3
    events = warnings(caplog, "discovery.core_count_ignored")
    assert events and events[0]["device"] == 0 and len(events[0]["value"]) <= 40
    assert events[0]["limit"] == MAX_CORES_PER_DEVICE


def test_core_count_in_bounds_is_used_for_an_unknown_type(tmp_path: Path) -> None:
    assert run(FakeNode.build(tmp_path, 3, core_count=MAX_CORES_PER_DEVICE)).topology.core_count == 48


def test_flag_beats_label_beats_device_count(tmp_path: Path) -> None:
    node = FakeNode.build(tmp_path, 16, core_count=2)
    assert (
        run(node, "inf1.24xlarge", "trn1.32xlarge").topology.instance_type,
        run(node, "inf1.24xlarge").type_source,
    ) == (
        "inf1.24xlarge",
        TypeSource.FLAG,
    )
    by_label = run(node, "", "trn1n.32xlarge")
    assert (by_label.topology.instance_type, by_label.type_source) == ("trn1n.32xlarge", TypeSource.NODE_LABEL)
    by_count = run(node)
    assert by_count.type_source is TypeSource.DEVICE_COUNT
    assert by_count.topology.rule is Rule.ALIGNED and by_count.topology.cores_per_device == 2


def test_ambiguous_device_count_falls_back_to_a_linear_chain(tmp_path: Path) -> None:
    node = FakeNode.build(tmp_path, 16)  # no sysfs core_count: inf1.24xlarge or trn?
    found = run(node)
    assert found.type_source is TypeSource.FALLBACK
    assert not found.topology.known and found.topology.rule is Rule.WINDOW
    assert found.topology.device_count == 16


def test_known_type_keeps_its_device_count_when_devices_are_missing(tmp_path: Path) -> None:
    node = FakeNode.build(tmp_path, 4, core_count=2)
    found = run(node, "trn1.32xlarge")
    assert found.topology.device_count == 16
    assert found.present == frozenset(range(4))


def test_trn2_cores_follow_lnc(tmp_path: Path) -> None:
    assert run(FakeNode.build(tmp_path / "a", 16, lnc=1), "trn2.48xlarge").topology.cores_per_device == 8
    assert run(FakeNode.build(tmp_path / "b", 16, lnc=2), "trn2.48xlarge").topology.cores_per_device == 4
    assert run(FakeNode.build(tmp_path / "c", 16), "trn2.48xlarge").topology.cores_per_device == 4


def test_trn3_cores_follow_lnc(tmp_path: Path) -> None:
    assert run(FakeNode.build(tmp_path / "a", 16, lnc=1), "trn3.48xlarge").topology.cores_per_device == 8
    assert run(FakeNode.build(tmp_path / "b", 4), "trn3e.24xlarge").topology.cores_per_device == 4


def test_sagemaker_node_label_gets_the_ec2_rule(tmp_path: Path) -> None:
    found = run(FakeNode.build(tmp_path, 16, core_count=2), label="ml.trn1.32xlarge")
    assert found.topology.known and found.topology.rule is Rule.ALIGNED
    assert found.topology.instance_type == "ml.trn1.32xlarge"
    assert found.type_source is TypeSource.NODE_LABEL


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1\n", 1),
        ("2", 2),
        ("3", None),
        ("two", None),
        ("", None),
        # AWS's EKS guide writes the setting as a KEY=value line from launch-template user data.
        ("NEURON_LOGICAL_NC_CONFIG=1\n", 1),
        ("NEURON_LOGICAL_NC_CONFIG=2", 2),
        ("NEURON_LOGICAL_NC_CONFIG=3", None),
        ("OTHER=1", None),
        ("NEURON_LOGICAL_NC_CONFIG=", None),
    ],
)
def test_read_logical_nc(tmp_path: Path, text: str, value: int | None) -> None:
    (tmp_path / "lnc").write_text(text)
    assert read_logical_nc(tmp_path / "lnc") == value


def test_numa_nodes_from_sysfs(tmp_path: Path) -> None:
    node = FakeNode.build(tmp_path, 2, core_count=2)
    for device, numa in ((0, "1"), (1, "-1")):
        pci = node.sys / "class" / "neuron_device" / f"neuron{device}" / "device"
        pci.mkdir()
        (pci / "numa_node").write_text(numa)
    assert run(node, "inf2.24xlarge").numa_nodes == {0: 1}


def test_no_devices_and_no_type_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="no neuronN device under"):
        run(FakeNode.build(tmp_path, 0))


def test_long_canonical_names_are_beyond_the_bound_not_odd(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = FakeNode.build(tmp_path, 2, core_count=2)
    (node.dev / ("neuron1" + "0" * 40)).write_text("")
    found = run(node)
    assert found.topology.device_count == 2
    [event] = warnings(caplog, "discovery.devices_ignored")
    assert event["reason"] == "beyond_ceiling" and event["count"] == 1
