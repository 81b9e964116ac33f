"""Read the kernel log's `NEURON_HW_ERR=` records: only the kernel's, and within fixed bounds.

The Neuron driver reports uncorrectable hardware errors as kernel messages such as
`NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR instance-id=i-0592 hostname=ip-1 nd-id=3 nc-id=0 ... action=...`.
`nd-id` names the device. Messages from older drivers carry no `nd-id`; a `neuronN:` prefix is used when
present, otherwise the error cannot be pinned to a device and the caller treats it as node-wide.

Anyone on the node can write log lines that quote the marker, so a line counts only if the kernel wrote it:
- `/dev/kmsg` (a character device): each record is `prio,seq,usec,flags;message`, and the facility
  (prio >> 3) must be 0. A write to /dev/kmsg from userspace, even by root, gets facility 1 (user).
- the ring buffer read through syslog(2) (plugin/ringbuffer.py): each line is `<prio>[secs.usecs] message`,
  with the same facility rule.
- a regular file written by a syslog daemon: the line's tag must be `kernel` (`Nov 22 02:05:56 host kernel:
  ...`, the same with an RFC 3339 time, or RFC 5424 with app-name `kernel` and, when the line keeps its
  <PRI>, facility 0). A file cannot prove more than its syslog daemon wrote: prefer /dev/kmsg.
What "the kernel wrote it" cannot prove: the Neuron runtime writes these lines through a driver ioctl that
prints caller text as a kernel record with no capability check, so any process that can open a /dev/neuronN
(any pod given a Neuron device) can write one naming any device. See plugin/health.py for what is done about it.
And within the kernel message, the marker must open it (after the printk time and one `driver:` prefix), so
a kernel message quoting user text (an audit record) names no error.

LineFollower reads at most MAX_POLL_BYTES per call, keeps no line longer than MAX_LINE_BYTES (longer ones are
dropped and counted, never buffered), and skips a file backlog beyond MAX_BACKLOG_BYTES (counted), so a flood
costs bounded memory and time per poll, and health keeps following the newest lines.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from enum import StrEnum

MARKER = "NEURON_HW_ERR="
MARKER_BYTES = MARKER.encode()
# Error kinds the Neuron driver reports; any other kind is counted as "other", so metric labels stay bounded.
KNOWN_KINDS = (
    "SRAM_UNCORRECTABLE_ERROR",
    "NC_UNCORRECTABLE_ERROR",
    "HBM_UNCORRECTABLE_ERROR",
    "DMA_ERROR",
    "HANG_ON_COLLECTIVES",
)
OTHER_KIND = "other"
HW_ERROR_KINDS = (*KNOWN_KINDS, OTHER_KIND)
# Why a kernel-log line or record was not acted on (metric label values).
# not_held: the device was held by no pod (--hw-error-trust=allocated only).
DROP_REASONS = ("too_long", "not_kernel", "malformed", "unknown_device", "overwritten", "not_held")

MAX_LINE_BYTES = 4096  # a kmsg record is at most ~1 KiB of text; syslog lines of interest are ~200 bytes
MAX_POLL_BYTES = 256 * 1024  # read per poll (every 200 ms): ~10,000 driver lines a second
MAX_BACKLOG_BYTES = 4 * 1024 * 1024  # unread file data beyond this is skipped, not queued
_FILE_CHUNK = 64 * 1024
_KMSG_CHUNK = 16 * 1024  # one record per read; a buffer smaller than the record fails with EINVAL
_MAX_READS = 4096  # per call, counting EPIPE retries: a kmsg ring overwritten under us cannot spin us
IMPOSSIBLE_DEVICE = 10**6  # stands in for an nd-id too long to convert

_KMSG_RECORD = re.compile(r"([0-9]{1,6}),[0-9]{1,20},[0-9]{1,20},[^;]{0,64};(.*)", re.DOTALL)
# syslog(2) output: "<prio>", then "[secs.usecs]" with printk.time, then "[T123]"/"[C1]" with CONFIG_PRINTK_CALLER,
# then one space if either was printed (kernel/printk/printk.c, info_print_prefix).
_RING_RECORD = re.compile(
    r"<([0-9]{1,4})>(\[ *([0-9]{1,12})\.([0-9]{6})\])?(?:\[ *([TC][0-9]{1,10})\])?(.*)", re.DOTALL
)
_TIME = (
    r"(?:[A-Z][a-z]{2} [ 0-9]?[0-9] [0-9]{2}:[0-9]{2}:[0-9]{2}"  # Nov 22 02:05:56
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,20}(?:Z|[+-][0-9]{2}:?[0-9]{2})?)"  # 2026-11-22T02:05:56.123+00:00
)
_SYSLOG_LINE = re.compile(_TIME + r" [^ ]{1,255} kernel: (.*)", re.DOTALL)
_RFC5424_LINE = re.compile(
    r"(?:<([0-9]{1,3})>)?1 [^ ]{1,64} [^ ]{1,255} kernel [^ ]{1,128} [^ ]{1,32} "
    r"(?:-|(?:\[(?:[^\]\\]|\\.){0,4096}\])+)(?: \ufeff?(.*))?",
    re.DOTALL,
)
_ERROR = re.compile(
    r"(?:\[ *[0-9.]{1,20}\] )?(?:([A-Za-z0-9_.:-]{1,64}(?: [A-Za-z0-9_.:-]{1,64})?): )?"
    r"NEURON_HW_ERR=([A-Za-z0-9_]{1,64})(?![A-Za-z0-9_])"
)
_DEVICE_FIELD = re.compile(r"(?<![\w-])nd-id=([0-9]+)")
_DEVICE_PREFIX = re.compile(r"neuron([0-9]{1,6})")


class RecordFormat(StrEnum):
    KMSG = "kmsg"  # /dev/kmsg records
    SYSLOG = "syslog"  # a file a syslog daemon (or `journalctl -kf`) writes
    RING = "ringbuffer"  # the ring buffer's lines as syslog(2) returns them


@dataclass(frozen=True)
class RingRecord:
    """One line of syslog(2) SYSLOG_ACTION_READ_ALL output."""

    facility: int  # 0 = the kernel
    level: int
    seconds: float | None  # printk time (seconds since boot); None when printk.time is off
    caller: str  # "T<pid>" or "C<cpu>" with CONFIG_PRINTK_CALLER, else ""
    text: str


def parse_ring_record(line: str) -> RingRecord | None:
    """A syslog(2) line, or None if `line` is not one. Never raises."""
    found = _RING_RECORD.fullmatch(line)
    if found is None:
        return None
    prio = int(found.group(1))
    timed, caller, text = found.group(2), found.group(5), found.group(6)
    if timed or caller:
        if not text.startswith(" "):  # the prefix ends with one space when it has a time or a caller
            return None
        text = text[1:]
    seconds = int(found.group(3)) + int(found.group(4)) / 1e6 if timed else None
    return RingRecord(prio >> 3, prio & 7, seconds, caller or "", text)


@dataclass(frozen=True)
class HardwareError:
    kind: str  # one of HW_ERROR_KINDS
    device: int | None  # None: the message does not say which device; IMPOSSIBLE_DEVICE: garbled


def kernel_message(line: str, record_format: RecordFormat) -> str | None:
    """The message of a kernel record, or None if `line` is not one (another writer, a continuation line)."""
    if record_format is RecordFormat.RING:
        ring = parse_ring_record(line)
        return ring.text if ring is not None and ring.facility == 0 else None
    if record_format is RecordFormat.KMSG:
        record = _KMSG_RECORD.fullmatch(line)
        if record is None or int(record.group(1)) >> 3 != 0:
            return None
        return record.group(2)
    traditional = _SYSLOG_LINE.fullmatch(line)
    if traditional is not None:
        return traditional.group(1)
    rfc5424 = _RFC5424_LINE.fullmatch(line)
    if rfc5424 is None or (rfc5424.group(1) is not None and int(rfc5424.group(1)) >> 3 != 0):
        return None
    return rfc5424.group(2) or ""


def parse_hw_error(message: str) -> HardwareError | None:
    """The hardware error a kernel message reports, or None if it reports none. Never raises."""
    found = _ERROR.match(message)
    if found is None:
        return None
    prefix, raw_kind = found.group(1), found.group(2)
    kind = raw_kind if raw_kind in KNOWN_KINDS else OTHER_KIND
    field_match = _DEVICE_FIELD.search(message, found.end())
    if field_match is not None:
        digits = field_match.group(1)
        return HardwareError(kind, int(digits) if len(digits) <= 6 else IMPOSSIBLE_DEVICE)
    named = _DEVICE_PREFIX.fullmatch(prefix) if prefix else None
    return HardwareError(kind, int(named.group(1)) if named else None)


@dataclass
class ReadResult:
    lines: list[bytes] = field(default_factory=list)  # complete lines, without the newline
    too_long: int = 0  # lines dropped for exceeding MAX_LINE_BYTES
    skipped_bytes: int = 0  # bytes never parsed (backlog skipped, over-long lines)
    overwritten: int = 0  # /dev/kmsg: times records were overwritten before we read them


class LineFollower:
    """Reads the lines appended to a file since the last call, like `tail -F`, without blocking.

    Starts at the end: errors logged before the daemon started are not replayed, so a restart clears them
    (health must be able to recover). A truncated or replaced file is read again from its start. Works for
    regular files and for /dev/kmsg (one record per read, EAGAIN at the end, EPIPE when overwritten).
    """

    poll_interval = 0.0  # every health poll: a read of a quiet file or /dev/kmsg costs one system call

    def __init__(
        self,
        path: str,
        *,
        max_line: int = MAX_LINE_BYTES,
        max_poll: int = MAX_POLL_BYTES,
        max_backlog: int = MAX_BACKLOG_BYTES,
    ) -> None:
        self._path = path
        self._max_line = max_line
        self._max_poll = max_poll
        self._max_backlog = max_backlog
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._regular = False
        self.is_char_device = False
        self._offset = 0
        self.partial = b""  # the start of a line not complete yet; never longer than max_line
        self._discarding = False  # inside an over-long line: drop bytes up to its newline
        self.open_error: str | None = None  # why the file cannot be read right now, for the caller to report
        self.open_errno: int | None = None
        self._open(at_end=True)

    def _open(self, *, at_end: bool) -> None:
        self.close()
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as error:
            self.open_error, self.open_errno = f"{self._path}: {error.strerror}", error.errno
            return  # not there yet, or not readable yet: try again on the next poll
        self.open_error, self.open_errno = None, None
        st = os.fstat(fd)
        self._fd, self._inode, self.partial, self._discarding = fd, (st.st_dev, st.st_ino), b"", False
        self._regular, self.is_char_device = stat.S_ISREG(st.st_mode), stat.S_ISCHR(st.st_mode)
        self._offset = os.lseek(fd, 0, os.SEEK_END) if at_end else 0

    def _replaced_or_truncated(self) -> bool:
        try:
            st = os.stat(self._path)
        except OSError:
            return False  # removed: keep reading the open file until a new one appears
        if (st.st_dev, st.st_ino) != self._inode:
            return True
        return stat.S_ISREG(st.st_mode) and st.st_size < self._offset

    def _skip_backlog(self, fd: int, result: ReadResult) -> None:
        """A file far ahead of us (a flood, or a huge file rotated in) is skipped to its end, counted."""
        size = os.fstat(fd).st_size
        if size - self._offset <= self._max_backlog:
            return
        result.skipped_bytes += size - self._offset + len(self.partial)
        self.partial = b""
        # Resume at a line start: unless the byte before the new position ends a line, drop up to the next one.
        self._discarding = os.pread(fd, 1, size - 1) != b"\n"
        self._offset = os.lseek(fd, size, os.SEEK_SET)

    def read(self) -> ReadResult:
        result = ReadResult()
        if self._fd is None or self._replaced_or_truncated():
            self._open(at_end=False)  # a file that appeared or was replaced holds only new lines
        fd = self._fd
        if fd is None:
            return result
        if self._regular:
            self._skip_backlog(fd, result)
        chunk_size = _KMSG_CHUNK if self.is_char_device else _FILE_CHUNK
        budget = self._max_poll
        for _ in range(_MAX_READS):
            if budget <= 0:
                break
            try:
                # A kmsg read must fit a whole record; a file read stops at the budget.
                chunk = os.read(fd, chunk_size if self.is_char_device else min(chunk_size, budget))
            except OSError as error:
                if error.errno == errno.EPIPE:  # /dev/kmsg: records were overwritten; keep reading
                    result.overwritten += 1
                    continue
                if error.errno == errno.EAGAIN:
                    break
                raise
            if not chunk:
                break
            budget -= len(chunk)
            self._offset += len(chunk)
            self._split(chunk, result)
        return result

    def _split(self, data: bytes, result: ReadResult) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                rest = len(data) - start
                if self._discarding:
                    result.skipped_bytes += rest
                elif len(self.partial) + rest > self._max_line:
                    result.too_long += 1
                    result.skipped_bytes += len(self.partial) + rest
                    self.partial, self._discarding = b"", True
                else:
                    self.partial += data[start:]
                return
            if self._discarding:
                result.skipped_bytes += end - start + 1
                self._discarding = False
            else:
                length = len(self.partial) + end - start
                if length > self._max_line:
                    result.too_long += 1
                    result.skipped_bytes += length
                else:
                    result.lines.append(self.partial + data[start:end])
                self.partial = b""
            start = end + 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
