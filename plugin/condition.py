"""The `NeuronDevicesHealthy` node condition: device health where operators and autoscalers already look.

The plugin sets one condition on its own node through the status subresource, with a strategic merge patch of
`status.conditions` (conditions merge by `type`), so kubelet's conditions and every other status field stay as
they are. The admission policy lets the plugin's service account change nothing else there
(deploy/plugin/admission-policy.yaml).

- status True: every device is healthy. Reason `AllDevicesHealthy`, or `HardwareErrorsNotWatched` when the
  kernel log is off or cannot be read (device presence is still checked; the message says why errors are not seen).
- status False: some device is unhealthy and withdrawn (kubelet stops offering it, the node's annotations no
  longer count it free). Reason `NeuronHardwareError` when a device is in a hardware-error quarantine, else
  `NeuronDeviceMissing`. The message lists the unhealthy devices with their reasons.

Words only, no counts of errors or times: the condition changes exactly when health does, and is written only
then, plus a heartbeat (HEARTBEAT_SECONDS) so a reader can tell a live writer from a stale condition. Writes back
off like the annotation publisher's when the API server fails or refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from neuronalloc import encode_ranges
from neuronalloc.nodestate import format_time
from neuronalloc.text import shorten
from neuronlog import get_logger
from plugin.kubeapi import KubeApiError, NodeApi
from plugin.metrics import PluginMetrics
from plugin.threads import in_daemon_thread

log = get_logger(__name__)

CONDITION_TYPE = "NeuronDevicesHealthy"
MAX_MESSAGE_CHARS = 1024  # the admission policy refuses longer messages
HEARTBEAT_SECONDS = 300.0
CHECK_SECONDS = 1.0  # how often the wanted condition is recomputed (pure; cheap) besides health-change triggers
BACKOFF_MIN_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
MAX_TIME_CHARS = 40  # a lastTransitionTime read back longer than this is not kept

ALL_HEALTHY = "AllDevicesHealthy"
NOT_WATCHED = "HardwareErrorsNotWatched"
HARDWARE_ERROR = "NeuronHardwareError"
DEVICE_MISSING = "NeuronDeviceMissing"


@dataclass(frozen=True)
class Condition:
    status: str  # "True" | "False"
    reason: str
    message: str


def health_condition(
    unhealthy: Mapping[int, str], device_count: int, *, hw_errors_unseen: str | None = None
) -> Condition:
    """The condition for this health. `unhealthy`: device -> reason as the health monitor merges them
    ("hw_error:KIND", "device_node_missing", or both joined by commas). `hw_errors_unseen`: why hardware errors
    cannot be seen now (kernel log off or unreadable), None while they can."""
    unseen = f"hardware errors are not seen: {hw_errors_unseen}" if hw_errors_unseen else ""
    if not unhealthy:
        if unseen:
            message = f"all {device_count} Neuron devices are present; {unseen}"
            return Condition("True", NOT_WATCHED, shorten(message, MAX_MESSAGE_CHARS))
        return Condition("True", ALL_HEALTHY, f"all {device_count} Neuron devices are healthy")
    by_reason: dict[str, set[int]] = {}
    for device, reasons in unhealthy.items():
        for reason in sorted(set(reasons.split(","))):
            by_reason.setdefault(reason, set()).add(device)
    parts = [f"{reason} on {encode_ranges(devices)}" for reason, devices in sorted(by_reason.items())]
    message = (
        f"{len(unhealthy)} of {device_count} Neuron devices unhealthy, not offered to pods: {'; '.join(parts)}"
        + (f". Also {unseen}" if unseen else "")
    )
    hardware = any(reason.startswith("hw_error:") for reason in by_reason)
    return Condition("False", HARDWARE_ERROR if hardware else DEVICE_MISSING, shorten(message, MAX_MESSAGE_CHARS))


class ConditionPublisher:
    """Keeps the node's `NeuronDevicesHealthy` condition equal to `wanted()`."""

    def __init__(
        self,
        node: str,
        api: NodeApi,
        metrics: PluginMetrics,
        wanted: Callable[[], Condition],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._node = node
        self._api = api
        self._metrics = metrics
        self._wanted = wanted
        self._clock = clock
        self._wall = wall
        self._wake = asyncio.Event()
        self.written: Condition | None = None
        self._written_at = 0.0
        self._transition_at: str | None = None  # lastTransitionTime of the status written (or found) last
        self._looked_up = False  # read the node's existing condition once, to keep its transition time
        self._backoff = 0.0
        self._next_attempt = 0.0

    def trigger(self) -> None:
        """Health changed: write soon."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.publish_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), CHECK_SECONDS)
            self._wake.clear()

    async def _existing_transition(self, status: str) -> str | None:
        """The lastTransitionTime an earlier instance wrote, if its status is `status`: a restart is no
        transition. None when unknown (the write then says now)."""
        try:
            found = await in_daemon_thread(self._api.node_condition, self._node, CONDITION_TYPE)
        except KubeApiError as error:
            log.debug("condition.read_failed", node=self._node, error=str(error))
            return None
        if not found or found.get("status") != status:
            return None
        at = found.get("lastTransitionTime")
        return at if isinstance(at, str) and 0 < len(at) <= MAX_TIME_CHARS else None

    async def publish_once(self) -> None:
        now = self._clock()
        if now < self._next_attempt:
            return
        want = self._wanted()
        if want == self.written and now - self._written_at < HEARTBEAT_SECONDS:
            return
        stamp = format_time(self._wall())
        if not self._looked_up:
            self._looked_up = True
            self._transition_at = await self._existing_transition(want.status)
        elif self.written is None or self.written.status != want.status:
            self._transition_at = None
        transition = self._transition_at or stamp
        body = {
            "type": CONDITION_TYPE,
            "status": want.status,
            "reason": want.reason,
            "message": want.message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": transition,
        }
        try:
            await in_daemon_thread(self._api.patch_node_condition, self._node, body)
        except KubeApiError as error:
            reason = "apiserver_unreachable" if error.unreachable else "apiserver_rejected"
            self._metrics.condition_errors.labels(reason).inc()
            self._backoff = min(max(self._backoff * 2, BACKOFF_MIN_SECONDS), BACKOFF_MAX_SECONDS)
            self._next_attempt = now + self._backoff
            log.warning("condition.failed", node=self._node, reason=reason, error=str(error), retry_in=self._backoff)
            return
        changed = want != self.written
        self.written, self._written_at, self._transition_at = want, now, transition
        self._backoff, self._next_attempt = 0.0, 0.0
        (log.info if changed else log.debug)(
            "condition.ok", node=self._node, type=CONDITION_TYPE, status=want.status, reason=want.reason,
            message=want.message, heartbeat=not changed,
        )  # fmt: skip
