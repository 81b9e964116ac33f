"""Device discovery and topology resolution on fake /dev and sysfs trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuronalloc import Rule
from plugin.discovery import Discovery, DiscoveryError, TypeSource, discover, read_logical_nc, scan_devices
from tests.plugin.kubelet_stub import FakeNode


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


@pytest.mark.parametrize(("text", "value"), [("1\n", 1), ("2", 2), ("3", None), ("two", None), ("", None)])
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
