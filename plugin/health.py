"""Per-device health: which devices are unhealthy right now, and why.

Health is the union of pluggable sources polled together. Presence (the device node exists) always runs; the
kernel-log source is on when --hw-error-log names a file. Every source can recover: a device node that returns
is healthy again, and a hardware error holds its device unhealthy only for a quarantine period after the last
report (NVIDIA's plugin never recovers a device; that is the bug not to copy).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from neuronlog import get_logger
from plugin.hwerrors import LineFollower, parse_hw_error

log = get_logger(__name__)

POLL_INTERVAL_SECONDS = 0.2  # device loss must reach kubelet within 1 s
HW_ERROR_QUARANTINE_SECONDS = 300.0


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


class KernelLogSource:
    """A `NEURON_HW_ERR=` line marks its device unhealthy until `quarantine` seconds pass without another.

    A line that names no device marks every device: the node cannot say which one failed.
    """

    name = "kernel_log"

    def __init__(self, path: str, device_count: int, *, quarantine: float = HW_ERROR_QUARANTINE_SECONDS) -> None:
        self._path = path
        self._follower = LineFollower(path)
        self._device_count = device_count
        self._quarantine = quarantine
        self._last_error: dict[int, tuple[float, str]] = {}
        self._reported_open_error: str | None = None

    def poll(self, now: float) -> Mapping[int, str]:
        lines = self._follower.read_lines()
        if self._follower.open_error != self._reported_open_error:  # log transitions, not every poll
            if self._follower.open_error:
                log.error("health.hw_error_log_unreadable", error=self._follower.open_error)
            else:
                log.info("health.hw_error_log_following", path=self._path)
            self._reported_open_error = self._follower.open_error
        for line in lines:
            error = parse_hw_error(line)
            if error is None:
                continue
            if error.device is not None and error.device >= self._device_count:
                log.warning("health.hw_error_unknown_device", device=error.device, kind=error.kind)
                continue
            devices = range(self._device_count) if error.device is None else (error.device,)
            log.warning("health.hw_error", devices=list(devices), kind=error.kind, line=line.strip()[:300])
            for device in devices:
                self._last_error[device] = (now, error.kind)
        expired = [d for d, (at, _) in self._last_error.items() if now - at >= self._quarantine]
        for device in expired:
            del self._last_error[device]
            log.info("health.hw_error_quarantine_over", device=device)
        return {device: f"hw_error:{kind}" for device, (_, kind) in self._last_error.items()}

    def close(self) -> None:
        self._follower.close()


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

    def check(self) -> bool:
        """Poll once; True if health changed."""
        now = self._clock()
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
            self.check()
            await asyncio.sleep(self._interval)
