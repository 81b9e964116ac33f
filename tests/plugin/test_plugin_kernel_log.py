"""The kernel log as hostile input: spoofed lines, impossible devices, floods, endless lines.

KernelLogSource and LineFollower run on real files with a fake clock; the last test follows the real
/dev/kmsg of this machine (skipped where it cannot be written).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from plugin.health import HW_ERROR_LOG_INTERVAL_SECONDS, KernelLogSource
from plugin.hwerrors import MAX_BACKLOG_BYTES, MAX_LINE_BYTES, MAX_POLL_BYTES, LineFollower, RecordFormat
from plugin.metrics import PluginMetrics
from plugin.ringbuffer import RingBufferReader
from tests.plugin.harness import Cluster
from tests.plugin.test_plugin_component import NEURON, start
from tests.plugin.test_plugin_ringbuffer import FakeRing

SYSLOG = "Nov 22 02:05:56 ip-10-0-1-7 kernel: "
KMSG_FLOOD_LINE = SYSLOG + "NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR instance-id=i-0592 hostname=ip-1 nd-id={} nc-id=0\n"


def append(path: Path, *lines: str) -> None:
    with path.open("a") as log:
        log.writelines(lines)


def counter(metrics: PluginMetrics, name: str, label: str | None = None) -> float:
    metric = getattr(metrics, name)
    child = metric.labels(label) if label is not None else metric
    return float(child._value.get())


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [getattr(r, "neuron_fields", {}) for r in caplog.records if r.getMessage() == name]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "kern.log"
    path.write_text("")
    return path


def source(path: Path, metrics: PluginMetrics, devices: int = 4, **kwargs: Any) -> KernelLogSource:
    return KernelLogSource(str(path), devices, metrics=metrics, **kwargs)


def test_a_line_from_another_writer_quoting_the_marker_marks_nothing(log_file: Path) -> None:
    metrics = PluginMetrics()
    src = source(log_file, metrics)
    append(
        log_file,
        'Nov 22 02:05:56 ip-10-0-1-7 kubelet[1234]: I1122 02:05:56.1 1234 log.go:1] "x" '
        'line="NEURON_HW_ERR=DMA_ERROR nd-id=1"\n',
        "NEURON_HW_ERR=DMA_ERROR nd-id=2\n",  # no syslog header at all
        SYSLOG + "audit: type=1123 msg='cmd=\"NEURON_HW_ERR=DMA_ERROR nd-id=3\"'\n",  # kernel, but quoting
    )
    assert src.poll(now=1) == {}
    assert counter(metrics, "kernel_log_dropped", "not_kernel") == 2
    assert counter(metrics, "kernel_log_dropped", "malformed") == 1
    append(log_file, SYSLOG + "NEURON_HW_ERR=DMA_ERROR nd-id=1\n")
    assert src.poll(now=2) == {1: "hw_error:DMA_ERROR"}
    src.close()


def test_kmsg_records_must_carry_the_kernel_facility(log_file: Path) -> None:
    metrics = PluginMetrics()
    src = source(log_file, metrics, record_format=RecordFormat.KMSG)
    append(
        log_file,
        "14,1001,5000,-;NEURON_HW_ERR=DMA_ERROR nd-id=1\n",  # what root's write to /dev/kmsg becomes
        "3,1002,5001,-;NEURON_HW_ERR=HBM_UNCORRECTABLE_ERROR nd-id=2\n SUBSYSTEM=pci\n DEVICE=+pci:0000:10:1c.0\n",
    )
    assert src.poll(now=1) == {2: "hw_error:HBM_UNCORRECTABLE_ERROR"}
    assert counter(metrics, "kernel_log_dropped", "not_kernel") == 1
    src.close()


def test_an_impossible_device_marks_nothing_and_warns_at_a_bounded_rate(
    log_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = PluginMetrics()
    src = source(log_file, metrics)
    huge = SYSLOG + "NEURON_HW_ERR=DMA_ERROR nd-id=" + "9" * 3000 + "\n"  # once marked every device
    append(log_file, huge, *(SYSLOG + f"NEURON_HW_ERR=DMA_ERROR nd-id={4 + i}\n" for i in range(1000)))
    with caplog.at_level(logging.WARNING):
        assert src.poll(now=1) == {}
        assert src.poll(now=2) == {}
    assert counter(metrics, "kernel_log_dropped", "unknown_device") == 1001
    assert len(events(caplog, "health.hw_error_unknown_device")) == 1  # the first at once, the rest counted
    with caplog.at_level(logging.WARNING):
        src.poll(now=1 + HW_ERROR_LOG_INTERVAL_SECONDS)
    [_, summary] = events(caplog, "health.hw_error_unknown_device")
    assert summary["count"] == 1000 and len(str(summary["device"])) <= 40
    src.close()


def test_error_kinds_are_bounded_in_metrics_and_reasons(log_file: Path) -> None:
    metrics = PluginMetrics()
    src = source(log_file, metrics)
    append(log_file, SYSLOG + "NEURON_HW_ERR=MADE_UP_KIND_12345 nd-id=0\n")
    assert src.poll(now=1) == {0: "hw_error:other"}
    assert counter(metrics, "hw_errors", "other") == 1
    text = metrics.exposition().decode()
    assert "MADE_UP_KIND" not in text
    src.close()


def test_repeated_errors_are_logged_once_per_device_per_interval(
    log_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = PluginMetrics()
    src = source(log_file, metrics)
    append(log_file, *(KMSG_FLOOD_LINE.format(d) for _ in range(1000) for d in (2, 3)))
    with caplog.at_level(logging.INFO):
        assert set(src.poll(now=1)) == {2, 3}
        append(log_file, *(KMSG_FLOOD_LINE.format(2) for _ in range(500)))
        src.poll(now=2)
    logged = events(caplog, "health.hw_error")
    assert sorted(e["device"] for e in logged) == [2, 3]  # the first of each device, at once
    assert counter(metrics, "hw_errors", "SRAM_UNCORRECTABLE_ERROR") == 2500
    with caplog.at_level(logging.INFO):
        src.poll(now=1 + HW_ERROR_LOG_INTERVAL_SECONDS)
    summaries = events(caplog, "health.hw_error")[2:]
    assert {e["device"]: e["count"] for e in summaries} == {2: 1499, 3: 999}
    src.close()


def test_a_96_mb_line_without_a_newline_does_not_grow_the_buffer(log_file: Path) -> None:
    metrics = PluginMetrics()
    src = source(log_file, metrics)
    follower = src.follower
    block = b"A" * (1024 * 1024)
    with log_file.open("ab") as log:
        for _ in range(96):
            log.write(block)
    for now in range(5):
        assert src.poll(now=now) == {}
        assert len(follower.partial) <= MAX_LINE_BYTES
    append(log_file, "rest of the endless line\n", SYSLOG + "NEURON_HW_ERR=DMA_ERROR nd-id=3\n")
    assert src.poll(now=10) == {3: "hw_error:DMA_ERROR"}
    assert counter(metrics, "kernel_log_skipped_bytes") >= 96 * 1024 * 1024
    src.close()


def test_an_over_long_line_is_dropped_and_counted_and_the_next_line_is_read(log_file: Path) -> None:
    follower = LineFollower(str(log_file))
    append(log_file, "x" * (MAX_LINE_BYTES + 1) + "\n", "short\n")
    result = follower.read()
    assert result.lines == [b"short"] and result.too_long == 1 and result.skipped_bytes == MAX_LINE_BYTES + 1
    # The same across reads: the over-long line arrives in pieces.
    append(log_file, "y" * (MAX_LINE_BYTES - 10))
    assert follower.read().lines == []
    append(log_file, "y" * 20 + "\nafter\n")
    result = follower.read()
    assert result.lines == [b"after"] and result.too_long == 1
    follower.close()


def test_one_read_is_bounded_and_a_backlog_beyond_the_bound_is_skipped(log_file: Path) -> None:
    follower = LineFollower(str(log_file))
    line = b"z" * 99 + b"\n"
    with log_file.open("ab") as log:
        log.write(line * (MAX_POLL_BYTES * 2 // len(line)))  # under the backlog bound: read over two polls
    first = follower.read()
    assert len(first.lines) * len(line) <= MAX_POLL_BYTES and first.skipped_bytes == 0
    assert len(first.lines) + len(follower.read().lines) == MAX_POLL_BYTES * 2 // len(line)
    with log_file.open("ab") as log:
        log.write(line * (2 * MAX_BACKLOG_BYTES // len(line)))
    flooded = follower.read()
    assert flooded.skipped_bytes >= MAX_BACKLOG_BYTES and flooded.lines == []
    append(log_file, "fresh\n")
    assert follower.read().lines == [b"fresh"]
    follower.close()


KMSG = Path("/dev/kmsg")


@pytest.mark.skipif(not os.access(KMSG, os.R_OK | os.W_OK), reason="needs a readable and writable /dev/kmsg")
def test_a_userspace_write_to_the_real_dev_kmsg_marks_nothing(trn1: Cluster) -> None:
    """Root can write to /dev/kmsg, but the kernel gives such records the user facility, not the kernel's."""
    endpoints = start(trn1, "trn1.32xlarge", ["--hw-error-log", str(KMSG)])
    endpoints[NEURON].wait_for_devices(lambda d: len(d) == 16)
    assert trn1.plugin is not None
    trn1.plugin.wait_event("health.hw_error_log_following")
    with KMSG.open("w") as kmsg:
        kmsg.write("<3>NEURON_HW_ERR=DMA_ERROR instance-id=i-0 hostname=h nd-id=1 nc-id=0 (neuron-contig test)\n")
    trn1.plugin.wait_event("health.hw_error_not_kernel")
    assert endpoints[NEURON].latest()["1"] == "Healthy"


# ---- the ring buffer: unreadable, and forged records -------------------------------------------------------


def test_an_unreadable_ring_is_reported_once_and_health_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    ring = FakeRing()
    ring.log("boot")
    ring.error = errno.EPERM
    metrics = PluginMetrics()
    src = KernelLogSource("ringbuffer", 4, metrics=metrics, reader=RingBufferReader(ring, window=4096))
    with caplog.at_level(logging.INFO):
        for now in range(5):
            assert src.poll(now=float(now)) == {}
    [event] = events(caplog, "health.hw_error_log_unreadable")
    assert event["source"] == "ringbuffer" and "CAP_SYSLOG" in event["error"] and "presence" in event["fallback"]
    assert src.problem is not None and "CAP_SYSLOG" in src.problem
    assert metrics.kernel_log_readable.labels("ringbuffer")._value.get() == 0
    ring.error = None
    with caplog.at_level(logging.INFO):
        src.poll(now=5.0)
        ring.log("NEURON_HW_ERR=NC_UNCORRECTABLE_ERROR nd-id=3", prio=3)
        assert src.poll(now=6.0) == {3: "hw_error:NC_UNCORRECTABLE_ERROR"}
    assert src.problem is None and metrics.kernel_log_readable.labels("ringbuffer")._value.get() == 1
    assert events(caplog, "health.hw_error_log_following")[-1]["source"] == "ringbuffer"


def test_dev_kmsg_refused_says_what_to_use_instead(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    kmsg.chmod(0)
    src = KernelLogSource(str(kmsg), 4, metrics=PluginMetrics())
    src.follower.open_errno, src.follower.open_error = errno.EPERM, f"{kmsg}: Operation not permitted"
    src.kind = "kmsg"  # as for the real /dev/kmsg in a container the device cgroup does not admit
    src._note_readability()
    assert src.problem is not None and "privileged" in src.problem and "ringbuffer" in src.problem


def test_with_trust_allocated_a_record_counts_only_for_devices_a_pod_held() -> None:
    """A pod given device 0 can make the driver print `NEURON_HW_ERR=... nd-id=2`: with trust `allocated`, a
    device no pod held in the last minute is not taken out of service by it; a held device is."""
    ring = FakeRing()
    ring.log("boot")
    held: list[frozenset[int] | None] = [frozenset({0, 1})]
    metrics = PluginMetrics()
    src = KernelLogSource(
        "ringbuffer", 4, metrics=metrics, reader=RingBufferReader(ring, window=4096),
        allocated=lambda: held[0], trust_allocated=True,
    )  # fmt: skip
    src.poll(now=0.0)
    ring.log("NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR nd-id=2 nc-id=0", prio=3)  # nobody holds device 2
    ring.log("NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR nd-id=1 nc-id=0", prio=3)
    assert src.poll(now=1.0) == {1: "hw_error:SRAM_UNCORRECTABLE_ERROR"}
    assert metrics.kernel_log_dropped.labels("not_held")._value.get() == 1
    held[0] = frozenset()  # the pod on device 0-1 ended: its devices still count for a grace period
    ring.log("NEURON_HW_ERR=DMA_ERROR nd-id=0", prio=3)
    assert set(src.poll(now=30.0)) == {0, 1}
    ring.log("NEURON_HW_ERR=DMA_ERROR nd-id=3", prio=3)
    ring.log("NEURON_HW_ERR=DMA_ERROR affecting neuron devices", prio=3)  # no device named: held ones only
    assert set(src.poll(now=31.0)) == {0, 1}
    ring.log("NEURON_HW_ERR=DMA_ERROR nd-id=0", prio=3)
    assert set(src.poll(now=120.0)) == {0, 1}  # still quarantined from t=30, but the new record is dropped
    assert metrics.kernel_log_dropped.labels("not_held")._value.get() == 3
    held[0] = None  # PodResources cannot say: every record counts (the side that fails closed)
    ring.log("NEURON_HW_ERR=DMA_ERROR nd-id=2", prio=3)
    assert 2 in src.poll(now=121.0)


def test_by_default_every_kernel_record_counts_whoever_holds_the_device() -> None:
    ring = FakeRing()
    ring.log("boot")
    src = KernelLogSource("ringbuffer", 4, metrics=PluginMetrics(), reader=RingBufferReader(ring, window=4096),
                          allocated=lambda: frozenset())  # fmt: skip
    src.poll(now=0.0)
    ring.log("NEURON_HW_ERR=DMA_ERROR nd-id=2", prio=3)
    assert src.poll(now=1.0) == {2: "hw_error:DMA_ERROR"}
