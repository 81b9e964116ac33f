"""Per-device health: which devices are unhealthy right now, and why.

Health is the union of pluggable sources polled together. Presence (the device node exists) always runs; the
kernel-log source runs unless --hw-error-log is "" (by default it reads the kernel ring buffer through syslog(2),
plugin/ringbuffer.py; /dev/kmsg and syslog files are the alternatives). A kernel log that cannot be read is
reported (log, gauge, node condition) and retried; presence keeps working and serving is not affected. Every
source can recover: a device node that returns is healthy again, and a hardware error holds its device unhealthy
only for a quarantine period after the last report (NVIDIA's plugin never recovers a device; that is the bug not
to copy).

Sources are polled on a worker thread, so a kernel-log flood costs the event loop (and kubelet's RPCs) nothing
but the GIL switches; the merged result is applied on the loop. The kernel-log source logs at a bounded rate:
the first error of a device at once, then one line per device per HW_ERROR_LOG_INTERVAL_SECONDS with a count.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, Protocol

from neuronalloc.text import shorten
from neuronlog import get_logger
from plugin.hwerrors import (
    MARKER_BYTES,
    LineFollower,
    ReadResult,
    RecordFormat,
    kernel_message,
    parse_hw_error,
    parse_ring_record,
)
from plugin.metrics import PluginMetrics
from plugin.ringbuffer import RING_BUFFER, RingBufferReader
from plugin.tally import LogTally

log = get_logger(__name__)

POLL_INTERVAL_SECONDS = 0.2  # device loss must reach kubelet within 1 s
HW_ERROR_QUARANTINE_SECONDS = 300.0
KMSG_PATH = "/dev/kmsg"
# --hw-error-trust=allocated: a device released this recently still counts as held (the pod whose runtime
# reported the error may end before the record is read and PodResources is polled again).
HELD_GRACE_SECONDS = 60.0
MAX_PROBLEM_CHARS = 300
HW_ERROR_LOG_INTERVAL_SECONDS = 10.0  # repeated kernel-log events: one line per key per interval, with a count
SAMPLE_CHARS = 200  # how much of an offending line a log event quotes


class HealthSource(Protocol):
    """Something that can tell a device is unhealthy. Polled; must not block."""

    name: str

    def poll(self, now: float) -> Mapping[int, str]:
        """device -> reason, for every device this source considers unhealthy at `now`."""
        ...


class PresenceSource:
    """A device is unhealthy while its neuronN node is missing from the device root."""

    name = "presence"

    def __init__(self, device_root: Path, device_count: int) -> None:
        # One stat per device of the topology, however many entries the device root holds.
        self._paths = {device: device_root / f"neuron{device}" for device in range(device_count)}

    def poll(self, now: float) -> Mapping[int, str]:
        return {device: "device_node_missing" for device, path in self._paths.items() if not os.path.lexists(path)}


def _log_hw_error(key: Hashable, count: int, fields: dict[str, Any]) -> None:
    log.warning("health.hw_error", device=key, count=count, **fields)


def _log_unknown_device(key: Hashable, count: int, fields: dict[str, Any]) -> None:
    log.warning("health.hw_error_unknown_device", count=count, **fields)


_DROP_EVENTS = {
    "not_kernel": "health.hw_error_not_kernel",  # the marker in a line the kernel did not write
    "malformed": "health.hw_error_malformed",  # a kernel message quoting the marker without opening with it
    "skipped": "health.kernel_log_skipped",  # backlog skipped or over-long lines dropped
    "overwritten": "health.kernel_log_overwritten",  # records lost before they were read (ring wrapped, cleared)
    "not_held": "health.hw_error_not_held",  # --hw-error-trust=allocated: a device no pod held
}


def _log_dropped(key: Hashable, count: int, fields: dict[str, Any]) -> None:
    log.warning(_DROP_EVENTS[str(key)], count=count, **fields)


class RecordReader(Protocol):
    """Where kernel records come from: a file or /dev/kmsg (LineFollower), or the ring buffer (RingBufferReader)."""

    poll_interval: float  # read at most this often (0 = every health poll)
    open_error: str | None  # why it cannot be read right now; None while it reads

    def read(self) -> ReadResult: ...

    def close(self) -> None: ...


def source_kind(path: str) -> str:
    """The `source` label of the kernel-log metrics for --hw-error-log `path`."""
    if path == RING_BUFFER:
        return "ringbuffer"
    return "kmsg" if os.path.realpath(path) == KMSG_PATH else "file"


class KernelLogSource:
    """A kernel `NEURON_HW_ERR=` record marks its device unhealthy until `quarantine` seconds pass without another.

    A record that names no device marks every device: the node cannot say which one failed. One that names a
    device this node does not have marks nothing (it is garbled or forged). See plugin/hwerrors.py for what
    counts as a kernel record.

    Forgery: the Neuron runtime writes these records through a driver ioctl that any process holding an open
    /dev/neuronN may call, with any text, so a pod given one device can name another. By default a record is
    believed whatever device it names: an error report cannot be disproved, and treating a reported error as
    real is the side that fails closed. With `allocated` (--hw-error-trust=allocated) a record counts only for
    devices some pod held within HELD_GRACE_SECONDS (whoever wrote it held a device then, and real errors come
    from the runtime using the device); a record naming a device nobody held is dropped and logged. While
    PodResources cannot say what is held (not read yet, or stale), every record counts. Each accepted error is
    logged with whether a pod held the device and, when the kernel prints it (CONFIG_PRINTK_CALLER), the
    writer's thread or CPU.
    """

    name = "kernel_log"

    def __init__(
        self,
        path: str,
        device_count: int,
        *,
        quarantine: float = HW_ERROR_QUARANTINE_SECONDS,
        metrics: PluginMetrics | None = None,
        record_format: RecordFormat | None = None,  # None: from the reader (kmsg, ring buffer or syslog file)
        log_interval: float = HW_ERROR_LOG_INTERVAL_SECONDS,
        reader: RecordReader | None = None,
        allocated: Callable[[], frozenset[int] | None] | None = None,
        trust_allocated: bool = False,
    ) -> None:
        self._path = path
        self.kind = source_kind(path)
        if reader is None:
            reader = RingBufferReader() if self.kind == "ringbuffer" else LineFollower(path)
        self.reader = reader
        self._record_format = record_format
        self._device_count = device_count
        self._quarantine = quarantine
        self._metrics = metrics or PluginMetrics()
        self._allocated = allocated
        self._trust_allocated = trust_allocated
        self._last_held: dict[int, float] = {}
        self._last_error: dict[int, tuple[float, str]] = {}
        self._last_read: float | None = None
        self._reported_problem: str | None = "not polled yet"  # so the first poll says what it follows
        self.problem: str | None = None  # why hardware errors cannot be seen now (for the node condition)
        self._errors = LogTally(log_interval, _log_hw_error)
        self._unknown = LogTally(log_interval, _log_unknown_device)
        self._dropped = LogTally(log_interval, _log_dropped)

    @property
    def follower(self) -> LineFollower:
        assert isinstance(self.reader, LineFollower), "not following a file"
        return self.reader

    def _format(self) -> RecordFormat:
        if self._record_format is not None:
            return self._record_format
        if isinstance(self.reader, LineFollower):
            return RecordFormat.KMSG if self.reader.is_char_device else RecordFormat.SYSLOG
        return RecordFormat.RING

    def _explain(self, error: str) -> str:
        reader = self.reader
        if self.kind == "kmsg" and isinstance(reader, LineFollower) and reader.open_errno == errno.EPERM:
            return (
                f"{error}: opening /dev/kmsg from a container needs a privileged container (the runtime's device "
                "cgroup admits only a container's default devices); --hw-error-log=ringbuffer reads the same records "
                "with CAP_SYSLOG alone"
            )
        return error

    def _note_readability(self) -> None:
        error = self.reader.open_error
        problem = None if error is None else shorten(self._explain(error), MAX_PROBLEM_CHARS)
        self.problem = problem
        if problem == self._reported_problem:  # log transitions, not every poll
            return
        self._metrics.kernel_log_readable.labels(self.kind).set(0 if problem else 1)
        if problem:
            log.warning("health.hw_error_log_unreadable", source=self.kind, path=self._path, error=problem,
                        fallback="device presence only; retried every poll")  # fmt: skip
        else:
            log.info("health.hw_error_log_following", source=self.kind, path=self._path, format=self._format().value)
        self._reported_problem = problem

    def poll(self, now: float) -> Mapping[int, str]:
        interval = getattr(self.reader, "poll_interval", 0.0)
        if self._last_read is None or now - self._last_read >= interval:
            self._last_read = now
            self._read(now)
        expired = [d for d, (at, _) in self._last_error.items() if now - at >= self._quarantine]
        for device in expired:
            del self._last_error[device]
            log.info("health.hw_error_quarantine_over", device=device)
        return {device: f"hw_error:{kind}" for device, (_, kind) in self._last_error.items()}

    def _read(self, now: float) -> None:
        result = self.reader.read()
        self._note_readability()
        metrics = self._metrics
        for reason, count in (("too_long", result.too_long), ("overwritten", result.overwritten)):
            if count:
                metrics.kernel_log_dropped.labels(reason).inc(count)
        if result.skipped_bytes:
            metrics.kernel_log_skipped_bytes.inc(result.skipped_bytes)
            self._dropped.add("skipped", now, bytes=result.skipped_bytes, too_long=result.too_long)
        if result.overwritten:
            self._dropped.add("overwritten", now, times=result.overwritten)
        held = self._held(now)
        record_format = self._format()
        for raw in result.lines:
            if MARKER_BYTES not in raw:  # most lines: no decode, no parse
                continue
            line = raw.decode("utf-8", "replace")
            self._read_line(line, record_format, now, held)
        self._errors.flush(now)
        self._unknown.flush(now)
        self._dropped.flush(now)

    def _held(self, now: float) -> frozenset[int] | None:
        """Devices some pod holds now or held within HELD_GRACE_SECONDS; None when that is not known."""
        if self._allocated is None:
            return None
        current = self._allocated()
        if current is None:
            return None
        for device in current:
            self._last_held[device] = now
        for device in [d for d, at in self._last_held.items() if now - at > HELD_GRACE_SECONDS]:
            del self._last_held[device]
        return frozenset(self._last_held)

    def _read_line(self, line: str, record_format: RecordFormat, now: float, held: frozenset[int] | None) -> None:
        message = kernel_message(line, record_format)
        error = None if message is None else parse_hw_error(message)
        if error is None:
            reason = "not_kernel" if message is None else "malformed"
            self._metrics.kernel_log_dropped.labels(reason).inc()
            self._dropped.add(reason, now, line=shorten(line, SAMPLE_CHARS))
            return
        if error.device is not None and error.device >= self._device_count:
            self._metrics.kernel_log_dropped.labels("unknown_device").inc()
            self._unknown.add(
                "unknown_device",
                now,
                device=shorten(str(error.device), 40),
                devices=self._device_count,
                kind=error.kind,
                line=shorten(line, SAMPLE_CHARS),
            )
            return
        named = range(self._device_count) if error.device is None else (error.device,)
        devices = list(named)
        if self._trust_allocated and held is not None:
            devices = [d for d in named if d in held]
            if not devices:
                self._metrics.kernel_log_dropped.labels("not_held").inc()
                self._dropped.add("not_held", now, device="all" if error.device is None else error.device,
                                  kind=error.kind, line=shorten(line, SAMPLE_CHARS))  # fmt: skip
                return
        self._metrics.hw_errors.labels(error.kind).inc()
        ring = parse_ring_record(line) if record_format is RecordFormat.RING else None
        self._errors.add(
            "all" if error.device is None else error.device,
            now,
            kind=error.kind,
            held="unknown" if held is None else ",".join(str(d) for d in devices if d in held) or "none",
            caller=ring.caller if ring is not None and ring.caller else "not printed",
            line=shorten(line, SAMPLE_CHARS),
        )
        for device in devices:
            self._last_error[device] = (now, error.kind)

    def close(self) -> None:
        self.reader.close()


class HealthMonitor:
    """Polls every source and calls `on_change(unhealthy)` when the set of unhealthy devices or reasons change."""

    def __init__(
        self,
        sources: list[HealthSource],
        on_change: Callable[[Mapping[int, str]], None],
        *,
        clock: Callable[[], float],
        interval: float = POLL_INTERVAL_SECONDS,
    ) -> None:
        self.sources = sources
        self._on_change = on_change
        self._clock = clock
        self._interval = interval
        self.unhealthy: dict[int, str] = {}

    def _poll_sources(self, now: float) -> dict[int, str]:
        merged: dict[int, str] = {}
        for source in self.sources:
            try:
                found = source.poll(now)
            except OSError as error:
                # A source that cannot be read says nothing; presence keeps working, and the next poll retries.
                log.error("health.source_failed", source=source.name, error=str(error))
                continue
            for device, reason in found.items():
                merged[device] = f"{merged[device]},{reason}" if device in merged else reason
        return merged

    def check(self) -> bool:
        """Poll once, here; True if health changed."""
        return self._apply(self._poll_sources(self._clock()))

    def _apply(self, merged: dict[int, str]) -> bool:
        if merged == self.unhealthy:
            return False
        for device in sorted(merged.keys() - self.unhealthy.keys()):
            log.warning("device.unhealthy", device=device, reason=merged[device])
        for device in sorted(self.unhealthy.keys() - merged.keys()):
            log.info("device.healthy", device=device)
        self.unhealthy = merged
        self._on_change(dict(merged))
        return True

    async def run(self) -> None:
        while True:
            # Polling reads files and parses kernel-log lines: off the loop that answers kubelet.
            self._apply(await asyncio.to_thread(self._poll_sources, self._clock()))
            await asyncio.sleep(self._interval)
