"""Publish this node's Neuron state as `neuron-contig.io/` node annotations.

The state is recomputed from kubelet's PodResources at start, shortly after every Allocate, and on a short
poll (there is no "free" RPC, so a poll is how released hardware is seen). Nothing is persisted. The
annotations are merge-patched only when they change (plus a slow heartbeat so readers can tell a live plugin
from a dead one). When the API server is unreachable the plugin keeps serving kubelet; writes back off and
the newest state is written once it answers.

A write that frees hardware (a pod gone, a device back, serving again) is written once more about a second
later, with only `observed-at` changed. kube-scheduler retries a waiting pod on the first write's node event,
and may ask the extender before the extender's own watch has that write: the extender refuses from the older
state, and nothing else would wake the pod for up to a minute (our heartbeat) or five (the scheduler's flush).
The echo's node event is a second retry, after the extender has caught up. Writes that only take hardware need
no echo: they cannot make a waiting pod fit.

The state carries whether the plugin is serving (plugin/serving.py). Before PodResources has answered there
is no state to write, so only `serving` (not serving, and why) and `plugin-address` are patched, leaving
whatever an earlier instance wrote marked as not serving. This publisher is the only writer: on SIGTERM it
writes "stopping" next, without a PodResources read and without waiting out a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from neuronalloc import decode_ranges, encode_node_state
from neuronalloc.nodestate import ALL_KEYS, FREE_CORES, FREE_DEVICES, MAX_REASON, OBSERVED_AT, PLUGIN_ADDRESS, SERVING
from neuronalloc.text import shorten
from neuronlog import get_logger
from plugin.kubeapi import KubeApiError, NodeApi
from plugin.metrics import PluginMetrics
from plugin.nodeview import NodeView, Usage
from plugin.podresources import PodResourcesUnavailable
from plugin.serving import STOPPING, Serving
from plugin.threads import in_daemon_thread

log = get_logger(__name__)

POLL_SECONDS = 2.0
AFTER_ALLOCATE_DELAY_SECONDS = 0.1  # kubelet records an allocation right after Allocate returns
HEARTBEAT_SECONDS = 60.0
ECHO_SECONDS = 1.0  # far above the skew between two watchers of one write (milliseconds), far below a heartbeat
BACKOFF_MIN_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0


def annotation_patch(desired: Mapping[str, str], written: Mapping[str, str] | None) -> dict[str, str | None]:
    """The merge patch that turns `written` (None = unknown, e.g. at start) into `desired`.

    Keys of ours that `desired` lacks are removed (null), so nothing stale survives a restart or an upgrade.
    """
    patch: dict[str, str | None] = dict(desired)
    for key in ALL_KEYS if written is None else written.keys():
        if key not in desired:
            patch[key] = None
    return patch


def needs_write(desired: Mapping[str, str], written: Mapping[str, str] | None, since_write: float) -> bool:
    if written is None or since_write >= HEARTBEAT_SECONDS:
        return True
    ignore = {OBSERVED_AT}  # a fresh read of the same state is not a change
    return {k: v for k, v in desired.items() if k not in ignore} != {
        k: v for k, v in written.items() if k not in ignore
    }


def frees_hardware(desired: Mapping[str, str], written: Mapping[str, str] | None) -> bool:
    """Whether writing `desired` over `written` can make a waiting pod fit: a device or core became free, or
    the node became serving. Decoding our own canonical encodings cannot fail."""
    if written is None:
        return False  # the first write: nobody could have been refused from an earlier state of ours
    if desired.get(SERVING) == "true" and written.get(SERVING) != "true":
        return True
    return any(
        decode_ranges(desired.get(key, "")) - decode_ranges(written.get(key, "")) for key in (FREE_DEVICES, FREE_CORES)
    )


class Publisher:
    def __init__(
        self,
        view: NodeView,
        node_name: str,
        api: NodeApi | None,
        metrics: PluginMetrics,
        serving: Serving,
        *,
        plugin_address: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._node = node_name
        self._api = api
        self._metrics = metrics
        self._serving = serving
        self._plugin_address = plugin_address
        self._clock = clock
        self._wake = asyncio.Event()
        self._written: dict[str, str] | None = None
        self._written_full = False  # False: _written is only the serving keys (no state was known)
        self.stopping_published = asyncio.Event()  # set once "stopping" is on the node
        self._written_at = 0.0
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._podresources_ok: bool | None = None
        self._echo_after: float | None = None  # when to write a freeing state once more (see the docstring)

    def trigger(self) -> None:
        """Ask for a PodResources read soon (after an Allocate)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.refresh_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
                await asyncio.sleep(AFTER_ALLOCATE_DELAY_SECONDS)
            self._wake.clear()

    async def refresh_once(self) -> None:
        if self._serving.stopping:  # only "stopping" is left to write: no read, nothing to wait for
            if self._api is not None:
                await self._publish(self._api, self._usage())
            return
        try:
            await self._view.refresh()
            self._metrics.set_pod_cores(self._view.holdings.core_holders)
            if self._podresources_ok is not True:
                log.info("podresources.ok", pods=len(self._view.holdings.pods))
            self._podresources_ok = True
        except PodResourcesUnavailable as error:
            self._metrics.publish_errors.labels("podresources_unavailable").inc()
            if self._podresources_ok is not False:  # log transitions, count every failure
                log.warning("podresources.unavailable", error=str(error))
            self._podresources_ok = False
        usage = self._usage()
        if usage is not None:
            self._metrics.set_usage(self._view.topology, usage)
        if self._api is not None:
            await self._publish(self._api, usage)

    def _usage(self) -> Usage | None:
        # Before PodResources answers, usage is unknown, not zero.
        return self._view.usage() if self._view.observed_at is not None else None

    def _desired(self, usage: Usage | None) -> tuple[dict[str, str], bool]:
        """The annotations to have, and whether they are the whole state (else only the serving keys)."""
        reason = self._serving.reason()
        state = None
        if usage is not None:
            state = self._view.node_state(usage, not_serving_reason=reason, plugin_address=self._plugin_address)
        if state is not None:
            return encode_node_state(state), True
        desired = {SERVING: "true" if reason is None else shorten(reason, MAX_REASON)}
        if self._plugin_address:
            desired[PLUGIN_ADDRESS] = self._plugin_address
        return desired, False

    async def _publish(self, api: NodeApi, usage: Usage | None) -> None:
        now = self._clock()
        if now < self._next_attempt and not self._serving.stopping:
            return  # backing off: building the state would be wasted
        desired, full = self._desired(usage)
        echo = (
            self._echo_after is not None
            and now >= self._echo_after
            and self._written is not None
            and desired.get(OBSERVED_AT) != self._written.get(OBSERVED_AT)  # else the patch changes nothing
        )
        if not echo and not needs_write(desired, self._written, now - self._written_at):
            return
        # A partial write leaves the other keys alone: they are an earlier state, now marked not serving.
        patch = annotation_patch(desired, self._written if self._written_full else None) if full else dict(desired)
        try:
            await in_daemon_thread(api.patch_node_annotations, self._node, patch)
        except KubeApiError as error:
            reason = "apiserver_unreachable" if error.unreachable else "apiserver_rejected"
            self._metrics.publish_errors.labels(reason).inc()
            self._backoff = min(max(self._backoff * 2, BACKOFF_MIN_SECONDS), BACKOFF_MAX_SECONDS)
            self._next_attempt = now + self._backoff
            log.warning("publish.failed", node=self._node, reason=reason, error=str(error), retry_in=self._backoff)
            return
        if full and self._written_full and frees_hardware(desired, self._written):
            self._echo_after = now + ECHO_SECONDS
        elif self._echo_after is not None and now >= self._echo_after:
            self._echo_after = None  # this write came late enough to serve as the echo
        self._written, self._written_full, self._written_at = desired, full, now
        self._backoff, self._next_attempt = 0.0, 0.0
        self._metrics.last_publish.set(time.time())
        if desired[SERVING] == STOPPING:
            self.stopping_published.set()
        log.info(
            "publish.ok",
            node=self._node,
            echo=echo,
            serving=desired[SERVING],
            free_devices=desired.get(FREE_DEVICES, ""),
            free_cores=desired.get(FREE_CORES, ""),
            pods=len(self._view.holdings.pods) if full else 0,
        )
