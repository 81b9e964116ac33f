"""Read the kernel's log ring buffer through syslog(2), as `dmesg` does: no device node, no mount, one capability.

Why not /dev/kmsg: a container may open only its default devices (the runtime's device cgroup has no rule for
char 1:11), so /dev/kmsg needs a privileged container whatever its capabilities. The syslog(2) system call
touches no device: with `kernel.dmesg_restrict=1` (Amazon Linux 2023's kernels) it needs CAP_SYSLOG, and
containerd's RuntimeDefault seccomp profile allows the call exactly when CAP_SYSLOG is in the container's
bounding set. Hence the DaemonSet adds CAP_SYSLOG back, alone (docs/security.md).

Only two actions are used, both read-only: SYSLOG_ACTION_SIZE_BUFFER (10) and SYSLOG_ACTION_READ_ALL (3), which
copies the newest whole records that fit the buffer and moves no reader position. Never SYSLOG_ACTION_READ (2):
it consumes records for every /proc/kmsg reader; never CLEAR (5), which CAP_SYSLOG would also allow.

Each line reads `<prio>[secs.usecs] text` (the time when printk.time is on, then `[T123]` with
CONFIG_PRINTK_CALLER); every line of a multi-line record carries the prefix. There is no sequence number, so a
poll finds where it stopped by searching the new copy for the last lines it had seen (the anchor): what follows
is new. Anchor not in the copy: the ring wrapped past it (or was cleared), so every record there is newer, and
the gap is counted. Bounds: a small read first (WINDOW_BYTES), the whole buffer only when the anchor is not in
it, never more than MAX_READ_BYTES; at most MAX_POLL_BYTES of new text per poll (older new text is skipped and
counted, as the file follower skips a backlog); lines over MAX_LINE_BYTES are dropped and counted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path
from typing import Protocol

from plugin.hwerrors import MAX_LINE_BYTES, MAX_POLL_BYTES, ReadResult

RING_BUFFER = "ringbuffer"  # the --hw-error-log value that names this reader
SYSLOG_ACTION_READ_ALL = 3
SYSLOG_ACTION_SIZE_BUFFER = 10
WINDOW_BYTES = 32 * 1024  # a second of ordinary kernel logging fits; a burst makes a second, whole read
MAX_READ_BYTES = 4 * 1024 * 1024  # a larger ring buffer (log_buf_len=) is read only up to its newest 4 MiB
ANCHOR_LINES = 4  # lines remembered to find the place again (several: a line can repeat without printk.time)
POLL_INTERVAL_SECONDS = 1.0  # a read formats the whole ring in the kernel: once a second, not every 200 ms
DMESG_RESTRICT = Path("/proc/sys/kernel/dmesg_restrict")


class KernelLog(Protocol):
    """The two syslog(2) actions the reader uses; tests pass an in-memory ring."""

    def buffer_size(self) -> int:
        """SYSLOG_ACTION_SIZE_BUFFER. Raises OSError."""
        ...

    def read_all(self, size: int) -> bytes:
        """SYSLOG_ACTION_READ_ALL into `size` bytes: the newest whole records that fit. Raises OSError."""
        ...


class SyslogCall:
    """syslog(2) through libc's klogctl(3)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._klogctl = self._libc.klogctl
        # A pointer, not c_char_p: c_char_p would pass the kernel a copy of the buffer, not the buffer.
        self._klogctl.argtypes = (ctypes.c_int, ctypes.POINTER(ctypes.c_char), ctypes.c_int)
        self._klogctl.restype = ctypes.c_int

    def _call(self, action: int, buffer: ctypes.Array[ctypes.c_char] | None, size: int) -> int:
        result = int(self._klogctl(action, buffer, size))
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    def buffer_size(self) -> int:
        return self._call(SYSLOG_ACTION_SIZE_BUFFER, None, 0)

    def read_all(self, size: int) -> bytes:
        buffer = ctypes.create_string_buffer(size)
        length = self._call(SYSLOG_ACTION_READ_ALL, buffer, size)  # before reading .raw: it is a copy
        return buffer.raw[:length]


def _dmesg_restrict() -> str:
    try:
        return DMESG_RESTRICT.read_text().strip()[:8] or "?"
    except OSError:
        return "?"


def explain(error: OSError) -> str:
    """Why the ring buffer cannot be read, in words an operator can act on."""
    what = f"syslog(2) SYSLOG_ACTION_READ_ALL: {error.strerror or error}"
    if error.errno == errno.EPERM:
        return (
            f"{what}: reading the kernel ring buffer with kernel.dmesg_restrict={_dmesg_restrict()} needs CAP_SYSLOG "
            "(add it to the container alone: capabilities.add [SYSLOG]; under RuntimeDefault seccomp it also lets "
            "the call through)"
        )
    if error.errno == errno.ENOSYS:
        return f"{what}: the system call is not available here (a seccomp profile without it, or gVisor)"
    return what


def _tail_start(data: bytes, lines: int) -> int:
    """Offset of the start of the last `lines` lines of `data` (which ends with a newline)."""
    position = len(data) - 1
    for _ in range(lines):
        newline = data.rfind(b"\n", 0, position)
        if newline < 0:
            return 0
        position = newline
    return position + 1


class RingBufferReader:
    """Returns the kernel records logged since the last call, like LineFollower does for a file.

    Starts at the end: records logged before the daemon started are not replayed, so a restart clears them,
    as with every other kernel-log source. `open_error` says why the ring cannot be read right now (retried on
    every read; the caller logs transitions).
    """

    name = "ringbuffer"
    poll_interval = POLL_INTERVAL_SECONDS

    def __init__(
        self,
        kernel_log: KernelLog | None = None,
        *,
        window: int = WINDOW_BYTES,
        max_read: int = MAX_READ_BYTES,
        max_poll: int = MAX_POLL_BYTES,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self._log = kernel_log or SyslogCall()
        self._window = window
        self._max_read = max_read
        self._max_poll = max_poll
        self._max_line = max_line
        self._anchor: bytes | None = None  # the last lines seen, newline-terminated; None before the first read
        self.open_error: str | None = None
        self.reads = 0  # read_all calls made, for tests and benchmarks

    def _read(self, size: int) -> bytes:
        self.reads += 1
        data = self._log.read_all(size)
        # Whole records end with a newline; anything after the last one is not a line yet.
        return data[: data.rfind(b"\n") + 1]

    def _after_anchor(self, data: bytes) -> int | None:
        """Where the text newer than the anchor starts in `data`, or None if the anchor is not in it.

        The anchor's last lines are tried first all together, then the newest line alone (its older lines
        may have left the ring while the newest is still there)."""
        anchor = self._anchor
        if not anchor:
            return None  # no read yet, or the ring was empty: everything in it now is new
        for candidate in (anchor, anchor[_tail_start(anchor, 1) :]):
            found = data.rfind(b"\n" + candidate)
            if found >= 0:
                return found + 1 + len(candidate)
            if data.startswith(candidate):
                return len(candidate)
        return None

    def read(self) -> ReadResult:
        result = ReadResult()
        try:
            data = self._read(self._window)
            start = self._after_anchor(data)
            if start is None and self._anchor is not None:
                # Not in the newest window: more was logged since (or the ring wrapped). Read all of it.
                size = min(max(self._log.buffer_size(), 0), self._max_read)
                if size > self._window:
                    data = self._read(size)
                    start = self._after_anchor(data)
        except OSError as error:
            self.open_error = explain(error)
            return result
        self.open_error = None
        if self._anchor is None:
            start = len(data)  # the first read only finds the end
        elif start is None:
            start = 0  # every record in the ring is newer than the anchor, which was overwritten or cleared
            if data and self._anchor:
                result.overwritten += 1
        if data:
            self._anchor = data[_tail_start(data, ANCHOR_LINES) :]
        elif self._anchor is None:
            self._anchor = b""  # an empty ring: everything logged from now on is new
        self._split(data, start, result)
        return result

    def _split(self, data: bytes, start: int, result: ReadResult) -> None:
        if len(data) - start > self._max_poll:
            # A backlog beyond one poll's bound: keep the newest lines, count the rest as skipped.
            cut = data.find(b"\n", len(data) - self._max_poll - 1) + 1
            result.skipped_bytes += cut - start
            start = cut
        for line in data[start:].split(b"\n")[:-1]:
            if len(line) > self._max_line:
                result.too_long += 1
                result.skipped_bytes += len(line)
            else:
                result.lines.append(line)

    def close(self) -> None:
        return
