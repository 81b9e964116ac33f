"""Per-device health: which devices are unhealthy right now, and why.

Health is the union of pluggable sources polled together. Presence (the device node exists) always runs; the
kernel-log source is on when --hw-error-log names a file. Every source can recover: a device node that returns
is healthy again, and a hardware error holds its device unhealthy only for a quarantine period after the last
report (NVIDIA's plugin never recovers a device; that is the bug not to copy).

Sources are polled on a worker thread, so a kernel-log flood costs the event loop (and kubelet's RPCs) nothing
but the GIL switches; the merged result is applied on the loop. The kernel-log source logs at a bounded rate:
the first error of a device at once, then one line per device per HW_ERROR_LOG_INTERVAL_SECONDS with a count.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, Protocol

from neuronalloc.text import shorten
from neuronlog import get_logger
from plugin.hwerrors import MARKER_BYTES, LineFollower, RecordFormat, kernel_message, parse_hw_error
from plugin.metrics import PluginMetrics
from plugin.tally import LogTally

log = get_logger(__name__)

POLL_INTERVAL_SECONDS = 0.2  # device loss must reach kubelet within 1 s
HW_ERROR_QUARANTINE_SECONDS = 300.0
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
}


def _log_dropped(key: Hashable, count: int, fields: dict[str, Any]) -> None:
    log.warning(_DROP_EVENTS[str(key)], count=count, **fields)


class KernelLogSource:
    """A kernel `NEURON_HW_ERR=` record marks its device unhealthy until `quarantine` seconds pass without another.

    A record that names no device marks every device: the node cannot say which one failed. One that names a
    device this node does not have marks nothing (it is garbled or forged). See plugin/hwerrors.py for what
    counts as a kernel record.
    """

    name = "kernel_log"

    def __init__(
        self,
        path: str,
        device_count: int,
        *,
        quarantine: float = HW_ERROR_QUARANTINE_SECONDS,
        metrics: PluginMetrics | None = None,
        record_format: RecordFormat | None = None,  # None: /dev/kmsg records for a character device, else syslog
        log_interval: float = HW_ERROR_LOG_INTERVAL_SECONDS,
    ) -> None:
        self._path = path
        self.follower = LineFollower(path)
        self._record_format = record_format
        self._device_count = device_count
        self._quarantine = quarantine
        self._metrics = metrics or PluginMetrics()
        self._last_error: dict[int, tuple[float, str]] = {}
        self._reported_open_error: str | None = "not polled yet"  # so the first poll says what it follows
        self._errors = LogTally(log_interval, _log_hw_error)
        self._unknown = LogTally(log_interval, _log_unknown_device)
        self._dropped = LogTally(log_interval, _log_dropped)

    def _format(self) -> RecordFormat:
        if self._record_format is not None:
            return self._record_format
        return RecordFormat.KMSG if self.follower.is_char_device else RecordFormat.SYSLOG

    def poll(self, now: float) -> Mapping[int, str]:
        result = self.follower.read()
        if self.follower.open_error != self._reported_open_error:  # log transitions, not every poll
            if self.follower.open_error:
                log.error("health.hw_error_log_unreadable", error=self.follower.open_error)
            else:
                log.info("health.hw_error_log_following", path=self._path, format=self._format().value)
            self._reported_open_error = self.follower.open_error
        metrics = self._metrics
        for reason, count in (("too_long", result.too_long), ("overwritten", result.overwritten)):
            if count:
                metrics.kernel_log_dropped.labels(reason).inc(count)
        if result.skipped_bytes:
            metrics.kernel_log_skipped_bytes.inc(result.skipped_bytes)
            self._dropped.add("skipped", now, bytes=result.skipped_bytes, too_long=result.too_long)
        record_format = self._format()
        for raw in result.lines:
            if MARKER_BYTES not in raw:  # most lines: no decode, no parse
                continue
            line = raw.decode("utf-8", "replace")
            self._read_line(line, record_format, now)
        self._errors.flush(now)
        self._unknown.flush(now)
        self._dropped.flush(now)
        expired = [d for d, (at, _) in self._last_error.items() if now - at >= self._quarantine]
        for device in expired:
            del self._last_error[device]
            log.info("health.hw_error_quarantine_over", device=device)
        return {device: f"hw_error:{kind}" for device, (_, kind) in self._last_error.items()}

    def _read_line(self, line: str, record_format: RecordFormat, now: float) -> None:
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
        self._metrics.hw_errors.labels(error.kind).inc()
        devices = range(self._device_count) if error.device is None else (error.device,)
        self._errors.add("all" if error.device is None else error.device, now, kind=error.kind,
                         line=shorten(line, SAMPLE_CHARS))  # fmt: skip
        for device in devices:
            self._last_error[device] = (now, error.kind)

    def close(self) -> None:
        self.follower.close()


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
