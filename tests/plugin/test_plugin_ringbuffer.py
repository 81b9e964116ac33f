"""The kernel ring buffer read through syslog(2): the record parser (property-tested), the de-duplication of
successive non-destructive reads against an in-memory ring that copies the kernel's READ_ALL rule (the newest
whole records that fit), and the real system call on this machine (root), with and without CAP_SYSLOG."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.health import KernelLogSource
from plugin.hwerrors import MAX_LINE_BYTES, RecordFormat, RingRecord, kernel_message, parse_ring_record
from plugin.metrics import PluginMetrics
from plugin.ringbuffer import RingBufferReader, SyslogCall, explain

CAP_SYS_ADMIN, CAP_SYSLOG = 21, 34
PR_CAPBSET_DROP = 24

TEXT = st.text(alphabet=st.characters(exclude_characters="\n\x00", exclude_categories=["Cs"]), max_size=80)


def render(prio: int, seconds: tuple[int, int] | None, caller: str, text: str) -> str:
    """A line as the kernel's info_print_prefix + record_print_text write it (kernel/printk/printk.c)."""
    line = f"<{prio}>"
    if seconds is not None:
        line += f"[{seconds[0]:5d}.{seconds[1]:06d}]"
    if caller:
        line += f"[{caller:>6}]"
    if seconds is not None or caller:
        line += " "
    return line + text


@given(
    st.integers(0, 191),
    st.none() | st.tuples(st.integers(0, 10**9), st.integers(0, 999_999)),
    st.just("") | st.builds(lambda c, n: f"{c}{n}", st.sampled_from("TC"), st.integers(0, 4_000_000)),
    TEXT,
)
def test_the_record_parser_reads_what_the_kernel_prints(
    prio: int, seconds: tuple[int, int] | None, caller: str, text: str
) -> None:
    record = parse_ring_record(render(prio, seconds, caller, text))
    expected_seconds = None if seconds is None else seconds[0] + seconds[1] / 1e6
    assert record == RingRecord(prio >> 3, prio & 7, expected_seconds, caller, text)
    message = kernel_message(render(prio, seconds, caller, text), RecordFormat.RING)
    assert message == (text if prio >> 3 == 0 else None)  # only facility 0 is the kernel's


@given(st.text(max_size=300))
def test_the_record_parser_never_raises(line: str) -> None:
    record = parse_ring_record(line)
    if not line.startswith("<"):
        assert record is None


def test_records_from_userspace_and_broken_prefixes_are_not_kernel_messages() -> None:
    marker = "NEURON_HW_ERR=DMA_ERROR nd-id=1"
    assert kernel_message(f"<3>[ 8410.256435] {marker}", RecordFormat.RING) == marker
    assert kernel_message(f"<3>[ 8410.256435][  T812] {marker}", RecordFormat.RING) == marker
    assert kernel_message(f"<3>{marker}", RecordFormat.RING) == marker  # printk.time off
    for line in (
        f"<11>[ 8410.256435] {marker}",  # root's write to /dev/kmsg: facility 1
        f"<14>[ 8410.256435] {marker}",
        f"<3>[ 8410.256435]{marker}",  # no space after the prefix
        f"[ 8410.256435] {marker}",
        marker,
        f"<99999>[ 1.000000] {marker}",
    ):
        assert kernel_message(line, RecordFormat.RING) is None, line


# ---- de-duplication against an in-memory ring ---------------------------------------------------------------


@dataclass
class FakeRing:
    """The kernel's log buffer as syslog(2) shows it: records (each one or more lines, newest last), `capacity`
    bytes of rendered text, the oldest dropped first. READ_ALL(n) returns the newest whole records fitting n."""

    capacity: int = 8192
    records: list[bytes] = field(default_factory=list)
    clock: int = 0
    error: int | None = None

    def log(self, text: str, prio: int = 6) -> bytes:
        self.clock += 1
        seconds = (self.clock // 1_000_000, self.clock % 1_000_000)
        lines = [render(prio, seconds, "", part) for part in text.split("\n")]  # each line gets the prefix
        record = ("\n".join(lines) + "\n").encode()
        self.records.append(record)
        while sum(map(len, self.records)) > self.capacity:
            self.records.pop(0)
        return record

    def clear(self) -> None:  # SYSLOG_ACTION_CLEAR (dmesg -C)
        self.records.clear()

    def buffer_size(self) -> int:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        return self.capacity

    def read_all(self, size: int) -> bytes:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        taken: list[bytes] = []
        for record in reversed(self.records):
            if sum(map(len, taken)) + len(record) > size:
                break
            taken.append(record)
        return b"".join(reversed(taken))


def lines_of(*records: bytes) -> list[bytes]:
    return [line for record in records for line in record.split(b"\n")[:-1]]


def test_the_first_read_starts_at_the_end_and_later_reads_return_only_new_records() -> None:
    ring = FakeRing()
    ring.log("before start")
    reader = RingBufferReader(ring, window=256)
    assert reader.read().lines == []
    one, two = ring.log("one"), ring.log("two\nsecond line")  # a two-line record: both lines carry the prefix
    assert reader.read().lines == lines_of(one, two)
    assert reader.read().lines == []
    three = ring.log("three")
    assert reader.read().lines == lines_of(three)


def test_a_burst_larger_than_the_window_is_read_whole_with_one_more_read() -> None:
    ring = FakeRing(capacity=64 * 1024)
    reader = RingBufferReader(ring, window=512)
    reader.read()
    burst = [ring.log(f"burst line {i}") for i in range(200)]
    reads = reader.reads
    assert reader.read().lines == lines_of(*burst)
    assert reader.reads - reads == 2  # the window, then everything


def test_a_wrapped_or_cleared_ring_yields_what_is_left_once_and_counts_the_gap() -> None:
    ring = FakeRing(capacity=2048)
    reader = RingBufferReader(ring, window=256)
    reader.read()
    ring.log("seen")
    reader.read()
    flood = [ring.log(f"flood {i:04d}") for i in range(300)]  # the anchor is long overwritten
    result = reader.read()
    survivors = [r for r in flood if r in ring.records]
    assert result.lines == lines_of(*survivors) and result.overwritten == 1
    ring.clear()
    after = ring.log("after dmesg -C")
    result = reader.read()
    assert result.lines == lines_of(after) and result.overwritten == 1
    assert reader.read().lines == []


def test_without_printk_time_identical_lines_do_not_confuse_the_anchor_beyond_repeats() -> None:
    """printk.time off: lines can repeat exactly. A run of identical records seen before may be taken as seen;
    a different record is never lost and nothing is returned twice."""
    ring = FakeRing()
    reader = RingBufferReader(ring, window=4096)
    reader.read()
    for _ in range(6):
        ring.records.append(b"<3>same\n")
    assert reader.read().lines == [b"<3>same"] * 6
    ring.records.append(b"<3>different\n")
    assert reader.read().lines == [b"<3>different"]


def test_reads_are_bounded_per_poll_and_long_lines_are_dropped() -> None:
    ring = FakeRing(capacity=1 << 20)
    reader = RingBufferReader(ring, window=4096, max_poll=10_000)
    reader.read()
    flood = [ring.log(f"line {i:06d} " + "x" * 80) for i in range(1000)]
    result = reader.read()
    kept = b"".join(line + b"\n" for line in result.lines)
    assert len(kept) <= 10_000 and result.skipped_bytes > 0
    assert result.lines == lines_of(*flood)[-len(result.lines) :]  # the newest are kept
    ring.log("y" * (MAX_LINE_BYTES + 10))
    ring.log("short")
    result = reader.read()
    assert result.too_long == 1 and [line.endswith(b"short") for line in result.lines] == [True]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 40), st.just(0)), max_size=30), st.integers(300, 4000))
def test_every_record_is_returned_once_in_order_whatever_the_timing(batches: list[int], capacity: int) -> None:
    """Batches of records between polls (0 = a poll with nothing new). Whatever is read is in log order and
    never repeated; a record is missing only if the ring dropped it before the poll, and then the gap counts."""
    ring = FakeRing(capacity=capacity)
    ring.log("boot")  # a live ring is never empty (after `dmesg -C` it is, and a gap right then goes uncounted)
    reader = RingBufferReader(ring, window=200)
    reader.read()
    logged: list[bytes] = []
    seen: list[bytes] = []
    for count in batches:
        batch = [ring.log(f"record {len(logged) + i}") for i in range(count)]
        logged += batch
        lost = [r for r in batch if r not in ring.records]
        result = reader.read()
        seen += result.lines
        if lost:
            assert result.overwritten == 1
        else:
            assert result.lines == lines_of(*batch)
    assert len(set(seen)) == len(seen)
    order = {line: i for i, line in enumerate(lines_of(*logged))}
    assert [order[line] for line in seen] == sorted(order[line] for line in seen)


def test_a_refused_call_says_why_and_the_reader_recovers() -> None:
    ring = FakeRing()
    reader = RingBufferReader(ring, window=256)
    ring.error = errno.EPERM
    assert reader.read().lines == [] and reader.open_error is not None
    assert "CAP_SYSLOG" in reader.open_error and "Operation not permitted" in reader.open_error
    ring.error = None
    reader.read()
    assert reader.open_error is None
    record = ring.log("after")
    assert reader.read().lines == lines_of(record)


def test_the_kernel_log_source_marks_devices_from_kernel_records_only() -> None:
    ring = FakeRing()
    metrics = PluginMetrics()
    source = KernelLogSource("ringbuffer", 4, metrics=metrics, reader=RingBufferReader(ring, window=4096))
    assert source.poll(now=0.0) == {}
    assert metrics.kernel_log_readable.labels("ringbuffer")._value.get() == 1
    ring.log("NEURON_HW_ERR=DMA_ERROR instance-id=i-0 hostname=h nd-id=1 nc-id=0", prio=11)  # userspace
    ring.log("NEURON_HW_ERR=HBM_UNCORRECTABLE_ERROR instance-id=i-0 hostname=h nd-id=2 nc-id=0", prio=3)
    assert source.poll(now=0.5) == {}  # read at most once a second
    assert source.poll(now=1.0) == {2: "hw_error:HBM_UNCORRECTABLE_ERROR"}
    assert metrics.kernel_log_dropped.labels("not_kernel")._value.get() == 1
    assert source.poll(now=2.0) == {2: "hw_error:HBM_UNCORRECTABLE_ERROR"}  # read again: counted once
    assert metrics.hw_errors.labels("HBM_UNCORRECTABLE_ERROR")._value.get() == 1
    assert source.poll(now=301.0) == {}  # quarantine over


# ---- the real system call -------------------------------------------------------------------------------------


def _can_read_the_ring() -> bool:
    try:
        SyslogCall().read_all(64)
    except OSError:
        return False
    return True


real_ring = pytest.mark.skipif(
    not _can_read_the_ring() or not os.access("/dev/kmsg", os.W_OK),
    reason="needs syslog(2) READ_ALL (CAP_SYSLOG) and a writable /dev/kmsg to put a record in the ring",
)


@real_ring
def test_the_real_ring_buffer_returns_a_new_record_once() -> None:
    reader = RingBufferReader()
    reader.read()
    token = f"neuron-contig ring test {uuid.uuid4().hex}"
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(f"<3>NEURON_HW_ERR=DMA_ERROR nd-id=1 {token}\n")
    ours = [line for line in reader.read().lines if token.encode() in line]
    assert len(ours) == 1
    record = parse_ring_record(ours[0].decode())
    assert record is not None and record.facility == 1 and record.level == 3  # userspace is never facility 0
    assert record.seconds is not None and record.text.endswith(token)
    assert kernel_message(ours[0].decode(), RecordFormat.RING) is None
    assert not [line for line in reader.read().lines if token.encode() in line]


@real_ring
def test_without_cap_syslog_the_real_call_is_refused_and_explained() -> None:
    """A child whose capability bounding set lacks CAP_SYSLOG (and CAP_SYS_ADMIN, which the kernel still
    accepts for syslog(2)) is refused under kernel.dmesg_restrict=1, as an unprivileged container is."""
    with open("/proc/sys/kernel/dmesg_restrict") as restrict:
        if restrict.read().strip() != "1":
            pytest.skip("kernel.dmesg_restrict is not 1: everyone may read the ring here")
    code = (
        "from plugin.ringbuffer import RingBufferReader\n"
        "reader = RingBufferReader()\nreader.read()\nprint(reader.open_error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=drop_capabilities
    )
    assert result.returncode == 0, result.stderr
    assert "Operation not permitted" in result.stdout and "CAP_SYSLOG" in result.stdout
    assert "kernel.dmesg_restrict=1" in result.stdout


def drop_capabilities() -> None:
    """In the child before exec: drop CAP_SYSLOG and CAP_SYS_ADMIN from the bounding set, so the exec'd
    program (root) starts without them."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_SYSLOG, CAP_SYS_ADMIN):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_explain_names_the_capability_and_the_sysctl() -> None:
    assert "CAP_SYSLOG" in explain(OSError(errno.EPERM, "Operation not permitted"))
    assert "not available" in explain(OSError(errno.ENOSYS, "Function not implemented"))
