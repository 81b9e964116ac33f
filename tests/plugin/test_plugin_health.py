"""Kernel-log parsing (property-tested), file following, and health sources with a fake clock."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from plugin.health import HealthMonitor, KernelLogSource, PresenceSource
from plugin.hwerrors import KNOWN_KINDS, HardwareError, LineFollower, RecordFormat, kernel_message, parse_hw_error

KINDS = st.sampled_from(KNOWN_KINDS)
NOISE = st.text(alphabet=st.characters(exclude_characters="\n", exclude_categories=["Cs"]), max_size=40)
SYSLOG = "Nov 22 02:05:56 ip-10-0-1-7 kernel: "


@given(KINDS, st.integers(0, 63), NOISE)
def test_parser_reads_kind_and_device_from_driver_lines(kind: str, device: int, suffix: str) -> None:
    message = f"NEURON_HW_ERR={kind} instance-id=i-0592 hostname=ip-1 nd-id={device} nc-id=1 {suffix}"
    assert parse_hw_error(message) == HardwareError(kind, device)
    assert parse_hw_error(f"[  812.345678] {message}") == HardwareError(kind, device)
    assert parse_hw_error(f"neuron: {message}") == HardwareError(kind, device)


@given(st.text())
def test_parser_never_raises_and_ignores_messages_without_the_marker(message: str) -> None:
    result = parse_hw_error(message)
    if "NEURON_HW_ERR=" not in message:
        assert result is None
    else:
        assert result is None or result.kind in (*KNOWN_KINDS, "other")


@given(KINDS, st.integers(0, 63))
def test_parser_falls_back_to_the_neuron_prefix_then_to_node_wide(kind: str, device: int) -> None:
    assert parse_hw_error(f"neuron{device}: NEURON_HW_ERR={kind} device={device}") == HardwareError(kind, device)
    assert parse_hw_error(f"NEURON_HW_ERR={kind} affecting neuron devices") == HardwareError(kind, None)


def test_parser_does_not_take_another_field_for_the_device() -> None:
    assert parse_hw_error("NEURON_HW_ERR=DMA_ERROR xnd-id=4") == HardwareError("DMA_ERROR", None)


def test_an_impossible_device_is_reported_as_such_not_as_node_wide() -> None:
    huge = parse_hw_error("NEURON_HW_ERR=DMA_ERROR nd-id=" + "9" * 5000)
    assert huge is not None and huge.device is not None and huge.device >= 10**6


def test_the_marker_must_open_the_kernel_message() -> None:
    # A kernel message that quotes the marker (audit records carry user-controlled text) names no error.
    assert parse_hw_error("audit: type=1123 msg='cmd=\"NEURON_HW_ERR=DMA_ERROR nd-id=1\"'") is None
    assert parse_hw_error("x NEURON_HW_ERR=DMA_ERROR nd-id=1") is None


def test_unknown_kinds_are_bounded() -> None:
    assert parse_hw_error("NEURON_HW_ERR=SOMETHING_NEW nd-id=1") == HardwareError("other", 1)
    assert parse_hw_error("NEURON_HW_ERR=" + "A" * 5000 + " nd-id=1") is None  # no such kind word


@given(st.text(max_size=300), st.sampled_from(list(RecordFormat)))
def test_record_parsers_never_raise(line: str, record_format: RecordFormat) -> None:
    kernel_message(line, record_format)


def test_only_kernel_records_are_kernel_messages() -> None:
    msg = "NEURON_HW_ERR=DMA_ERROR nd-id=1"
    syslog, kmsg = RecordFormat.SYSLOG, RecordFormat.KMSG
    assert kernel_message(f"Nov 22 02:05:56 ip-10-0-1-7 kernel: {msg}", syslog) == msg
    assert kernel_message(f"Nov  2 02:05:56 ip-10-0-1-7 kernel: [ 812.3] {msg}", syslog) == f"[ 812.3] {msg}"
    assert kernel_message(f"2026-11-22T02:05:56.123456+00:00 ip-10-0-1-7 kernel: {msg}", syslog) == msg
    assert kernel_message(f"<3>1 2026-11-22T02:05:56.1Z ip-10-0-1-7 kernel - - - {msg}", syslog) == msg
    assert kernel_message(f'1 2026-11-22T02:05:56Z host kernel - - [a@1 b="x\\]"] {msg}', syslog) == msg
    assert kernel_message(f"3,1234,5678,-;{msg}", kmsg) == msg
    assert kernel_message(f"0,1,2,c,more;{msg}", kmsg) == msg
    for spoof, fmt in (
        (f'Nov 22 02:05:56 ip-10-0-1-7 kubelet[1234]: I1122 02:05:56.1 1234 log.go:1] "x" line="{msg}"', syslog),
        (f"Nov 22 02:05:56 ip-10-0-1-7 myapp: kernel: {msg}", syslog),
        (msg, syslog),
        (f"kernel: {msg}", syslog),
        (f"<11>1 2026-11-22T02:05:56Z host kernel - - - {msg}", syslog),  # facility 1 (user) naming itself kernel
        (f"<3>1 2026-11-22T02:05:56Z host kubelet - - - {msg}", syslog),
        (f"14,1234,5678,-;{msg}", kmsg),  # what a write to /dev/kmsg by root gives: facility 1 (user)
        (f" SUBSYSTEM={msg}", kmsg),  # a continuation line
        (msg, kmsg),
    ):
        assert kernel_message(spoof, fmt) is None, spoof


def test_follower_reads_appended_lines_only_and_survives_truncation_and_replacement(tmp_path: Path) -> None:
    path = tmp_path / "kmsg"
    path.write_text("old line\n")
    follower = LineFollower(str(path))
    assert follower.read().lines == []
    with path.open("a") as log:
        log.write("one\ntw")
    assert follower.read().lines == [b"one"]
    with path.open("a") as log:
        log.write("o\n")
    assert follower.read().lines == [b"two"]
    path.write_text("")  # truncated (log rotation with copytruncate)
    assert follower.read().lines == []
    with path.open("a") as log:
        log.write("three\n")
    assert follower.read().lines == [b"three"]
    replacement = tmp_path / "kmsg.new"
    replacement.write_text("four\n")
    os.replace(replacement, path)  # replaced (rotation by rename)
    assert follower.read().lines == [b"four"]
    follower.close()


def test_follower_waits_for_a_file_that_appears_later(tmp_path: Path) -> None:
    follower = LineFollower(str(tmp_path / "later"))
    assert follower.read().lines == []
    (tmp_path / "later").write_text("first\n")
    assert follower.read().lines == [b"first"]
    follower.close()


def test_hw_error_quarantine_ends_and_device_recovers(tmp_path: Path) -> None:
    path = tmp_path / "kmsg"
    path.write_text("")
    source = KernelLogSource(str(path), device_count=4, quarantine=60)
    with path.open("a") as log:
        log.write(SYSLOG + "NEURON_HW_ERR=NC_UNCORRECTABLE_ERROR nd-id=2\n")
    assert source.poll(now=100) == {2: "hw_error:NC_UNCORRECTABLE_ERROR"}
    assert source.poll(now=159) == {2: "hw_error:NC_UNCORRECTABLE_ERROR"}
    assert source.poll(now=160) == {}
    with path.open("a") as log:
        log.write(SYSLOG + "NEURON_HW_ERR=DMA_ERROR nd-id=7\n")  # no such device on this node: ignored
        log.write(SYSLOG + "NEURON_HW_ERR=DMA_ERROR affecting neuron devices\n")  # no device named: all of them
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
