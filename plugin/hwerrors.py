"""Parse and follow the kernel log's `NEURON_HW_ERR=` lines.

The Neuron driver reports uncorrectable hardware errors as kernel-log lines such as
`NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR instance-id=i-0592 hostname=ip-1 nd-id=3 nc-id=0 ... action=...`.
`nd-id` names the device. Lines from older drivers carry no `nd-id`; a `neuronN:` prefix is used when present,
otherwise the error cannot be pinned to a device and the caller treats it as node-wide.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

_KIND = re.compile(r"NEURON_HW_ERR=([A-Za-z0-9_]+)")
_DEVICE_FIELD = re.compile(r"(?<![\w-])nd-id=(\d+)\b")
_DEVICE_PREFIX = re.compile(r"(?<!\w)neuron(\d+):")
# Error kinds the Neuron driver reports; any other kind is counted as "other", so metric labels stay bounded.
KNOWN_KINDS = (
    "SRAM_UNCORRECTABLE_ERROR",
    "NC_UNCORRECTABLE_ERROR",
    "HBM_UNCORRECTABLE_ERROR",
    "DMA_ERROR",
    "HANG_ON_COLLECTIVES",
)
HW_ERROR_KINDS = (*KNOWN_KINDS, "other")
# Why a kernel-log line or record was not acted on (metric label values).
DROP_REASONS = ("too_long", "not_kernel", "unknown_device", "overwritten")
_MAX_DEVICE_INDEX = 1023  # far above any Neuron node; keeps a garbled line from naming device 10**30


@dataclass(frozen=True)
class HardwareError:
    kind: str  # e.g. "SRAM_UNCORRECTABLE_ERROR"
    device: int | None  # None: the line does not say which device


def parse_hw_error(line: str) -> HardwareError | None:
    """The hardware error a kernel-log line reports, or None if it reports none. Never raises."""
    kind = _KIND.search(line)
    if kind is None:
        return None
    for pattern in (_DEVICE_FIELD, _DEVICE_PREFIX):
        found = pattern.search(line)
        if found and int(found.group(1)) <= _MAX_DEVICE_INDEX:
            return HardwareError(kind.group(1), int(found.group(1)))
    return HardwareError(kind.group(1), None)


class LineFollower:
    """Reads the lines appended to a file since the last call, like `tail -F`, without blocking.

    Starts at the end: errors logged before the daemon started are not replayed, so a restart clears them
    (health must be able to recover). A truncated or replaced file is read again from its start. Works for
    regular files and for /dev/kmsg (one record per read, EAGAIN at the end).
    """

    _CHUNK = 65536

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self.open_error: str | None = None  # why the file cannot be read right now, for the caller to report
        self._open(at_end=True)

    def _open(self, *, at_end: bool) -> None:
        self.close()
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as error:
            self.open_error = f"{self._path}: {error.strerror}"
            return  # not there yet, or not readable yet: try again on the next poll
        self.open_error = None
        st = os.fstat(fd)
        self._fd, self._inode, self._partial = fd, (st.st_dev, st.st_ino), b""
        self._offset = os.lseek(fd, 0, os.SEEK_END) if at_end else 0

    def _replaced_or_truncated(self) -> bool:
        try:
            st = os.stat(self._path)
        except OSError:
            return False  # removed: keep reading the open file until a new one appears
        if (st.st_dev, st.st_ino) != self._inode:
            return True
        return stat.S_ISREG(st.st_mode) and st.st_size < self._offset

    def read_lines(self) -> list[str]:
        if self._fd is None or self._replaced_or_truncated():
            self._open(at_end=False)  # a file that appeared or was replaced holds only new lines
            if self._fd is None:
                return []
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(self._fd, self._CHUNK)
            except OSError as error:
                if error.errno == errno.EPIPE:  # /dev/kmsg: records were overwritten; keep reading
                    continue
                if error.errno == errno.EAGAIN:
                    break
                raise
            if not chunk:
                break
            self._offset += len(chunk)
            chunks.append(chunk)
        data = self._partial + b"".join(chunks)
        *complete, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
