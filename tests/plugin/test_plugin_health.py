"""Kernel-log parsing (property-tested), file following, and health sources with a fake clock."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from plugin.health import HealthMonitor, KernelLogSource, PresenceSource
from plugin.hwerrors import HardwareError, LineFollower, parse_hw_error

KINDS = st.sampled_from(["SRAM_UNCORRECTABLE_ERROR", "NC_UNCORRECTABLE_ERROR", "HBM_UNCORRECTABLE_ERROR", "DMA_ERROR"])
NOISE = st.text(alphabet=st.characters(exclude_characters="\n", exclude_categories=["Cs"]), max_size=40)


@given(NOISE, KINDS, st.integers(0, 63), NOISE)
def test_parser_reads_kind_and_device_from_driver_lines(prefix: str, kind: str, device: int, suffix: str) -> None:
    line = f"{prefix} NEURON_HW_ERR={kind} instance-id=i-0592 hostname=ip-1 nd-id={device} nc-id=1 {suffix}"
    assert parse_hw_error(line) == HardwareError(kind, device)


@given(st.text())
def test_parser_never_raises_and_ignores_lines_without_the_marker(line: str) -> None:
    result = parse_hw_error(line)
    if "NEURON_HW_ERR=" not in line:
        assert result is None


@given(KINDS, st.integers(0, 63))
def test_parser_falls_back_to_the_neuron_prefix_then_to_node_wide(kind: str, device: int) -> None:
    assert parse_hw_error(f"neuron{device}: NEURON_HW_ERR={kind} device={device}") == HardwareError(kind, device)
    assert parse_hw_error(f"kernel: NEURON_HW_ERR={kind} affecting neuron devices") == HardwareError(kind, None)


def test_parser_does_not_take_another_field_for_the_device() -> None:
    assert parse_hw_error("NEURON_HW_ERR=DMA_ERROR xnd-id=4") == HardwareError("DMA_ERROR", None)
    assert parse_hw_error("NEURON_HW_ERR=DMA_ERROR nd-id=99999999999999999999") == HardwareError("DMA_ERROR", None)


def test_follower_reads_appended_lines_only_and_survives_truncation_and_replacement(tmp_path: Path) -> None:
    path = tmp_path / "kmsg"
    path.write_text("old line\n")
    follower = LineFollower(str(path))
    assert follower.read_lines() == []
    with path.open("a") as log:
        log.write("one\ntw")
    assert follower.read_lines() == ["one"]
    with path.open("a") as log:
        log.write("o\n")
    assert follower.read_lines() == ["two"]
    path.write_text("")  # truncated (log rotation with copytruncate)
    assert follower.read_lines() == []
    with path.open("a") as log:
        log.write("three\n")
    assert follower.read_lines() == ["three"]
    replacement = tmp_path / "kmsg.new"
    replacement.write_text("four\n")
    os.replace(replacement, path)  # replaced (rotation by rename)
    assert follower.read_lines() == ["four"]
    follower.close()


def test_follower_waits_for_a_file_that_appears_later(tmp_path: Path) -> None:
    follower = LineFollower(str(tmp_path / "later"))
    assert follower.read_lines() == []
    (tmp_path / "later").write_text("first\n")
    assert follower.read_lines() == ["first"]
    follower.close()


def test_hw_error_quarantine_ends_and_device_recovers(tmp_path: Path) -> None:
    path = tmp_path / "kmsg"
    path.write_text("")
    source = KernelLogSource(str(path), device_count=4, quarantine=60)
    with path.open("a") as log:
        log.write("NEURON_HW_ERR=NC_UNCORRECTABLE_ERROR nd-id=2\n")
    assert source.poll(now=100) == {2: "hw_error:NC_UNCORRECTABLE_ERROR"}
    assert source.poll(now=159) == {2: "hw_error:NC_UNCORRECTABLE_ERROR"}
    assert source.poll(now=160) == {}
    with path.open("a") as log:
        log.write("NEURON_HW_ERR=DMA_ERROR nd-id=7\n")  # no such device on this node: ignored
        log.write("NEURON_HW_ERR=DMA_ERROR affecting neuron devices\n")  # no device named: all of them
    assert set(source.poll(now=200)) == {0, 1, 2, 3}
    source.close()


def test_monitor_merges_sources_and_reports_changes_only(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for i in range(3):
        (dev / f"neuron{i}").write_text("")
    changes: list[dict[int, str]] = []
    monitor = HealthMonitor([PresenceSource(dev, 3)], lambda u: changes.append(dict(u)), clock=lambda: 0.0)
    assert monitor.check() is False and changes == []
    (dev / "neuron1").unlink()
    assert monitor.check() is True
    assert monitor.check() is False
    (dev / "neuron1").write_text("")
    monitor.check()
    assert changes == [{1: "device_node_missing"}, {}]
