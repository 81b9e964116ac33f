"""Keep this node's ResourceSlices equal to what `neuronalloc.draslices` says it should publish.

Every POLL_SECONDS, and at once on a health change, the publisher lists the node's slices of this driver and
converges: unchanged slices are left alone; otherwise every slice of the pool is written at a new pool
generation (the scheduler reads only the highest generation, and only once all `resourceSliceCount` slices of it
are there), and slices that should not exist are deleted. Kubelet deletes a node's slices when it starts (maybe
after the driver registered again) and when the driver has been gone for 30 s: the next poll puts them back.

Slices are compared on what the driver sets (the API server adds defaults and taint times), so a poll that finds
them intact writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Mapping
from typing import Any

from neuronalloc import Topology
from neuronalloc.draslices import DRIVER, SliceSpec, slice_specs
from neuronlog import get_logger
from plugin.dra.api import DraApi
from plugin.dra.metrics import DraMetrics
from plugin.kubeapi import KubeApiError
from plugin.threads import in_daemon_thread

log = get_logger(__name__)

POLL_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 30.0


def _canonical_device(device: Mapping[str, Any]) -> Any:
    taints = [(t.get("key"), t.get("value", ""), t.get("effect")) for t in device.get("taints") or []]
    return (device.get("name"), device.get("attributes"), device.get("consumesCounters"), sorted(taints))


def canonical(spec: Mapping[str, Any]) -> Any:
    """The parts of a slice spec the driver sets, in a comparable form (generation left out)."""
    pool = spec.get("pool") or {}
    devices = [_canonical_device(d) for d in spec.get("devices") or [] if isinstance(d, Mapping)]
    return (
        spec.get("driver"),
        spec.get("nodeName"),
        pool.get("name"),
        pool.get("resourceSliceCount"),
        spec.get("sharedCounters") or None,
        devices or None,
    )


def _generation(item: Mapping[str, Any]) -> int:
    value = ((item.get("spec") or {}).get("pool") or {}).get("generation")
    return value if isinstance(value, int) else 0


class SlicePublisher:
    def __init__(
        self,
        api: DraApi | None,
        node: str,
        topo: Topology,
        metrics: DraMetrics,
        *,
        small_first: bool,
        owner: Mapping[str, Any] | None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._api = api
        self._node = node
        self._topo = topo
        self._metrics = metrics
        self._small_first = small_first
        self._owner = owner  # the Node, so that the slices go when the node does
        self._on_change = on_change
        self._unhealthy: frozenset[int] = frozenset()
        self._wake = asyncio.Event()
        self.published = False  # the slices on the API server are what we want, as of the last poll
        self.problem: str | None = "starting: ResourceSlices not published yet"
        self.generation = 0

    def set_unhealthy(self, devices: Collection[int]) -> None:
        if frozenset(devices) != self._unhealthy:
            self._unhealthy = frozenset(devices)
            self._wake.set()

    def desired(self) -> list[SliceSpec]:
        return slice_specs(self._topo, self._node, self._unhealthy, small_first=self._small_first)

    async def run(self) -> None:
        backoff = 0.0
        while True:
            self._wake.clear()
            try:
                await self.sync_once()
                backoff = 0.0
            except KubeApiError as error:
                backoff = min(max(backoff * 2, 1.0), BACKOFF_MAX_SECONDS)
                self._set(False, f"ResourceSlices not published: {error}")
                log.warning("slices.publish_failed", node=self._node, error=str(error), retry_in=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff or POLL_SECONDS)

    def _set(self, published: bool, problem: str | None) -> None:
        changed = (published, problem) != (self.published, self.problem)
        self.published, self.problem = published, problem
        if changed:
            self._on_change()

    async def sync_once(self) -> bool:
        """Converge once; True if anything was written."""
        if self._api is None:
            self._set(False, "ResourceSlices cannot be published: no API server (--kubeconfig none)")
            return False
        api = self._api
        want = self.desired()
        items = await in_daemon_thread(api.node_slices, self._node)
        have = {
            item["metadata"]["name"]: item
            for item in items
            if isinstance(item, dict) and isinstance((item.get("metadata") or {}).get("name"), str)
        }
        generations = {_generation(item) for item in have.values()}
        intact = (
            set(have) == {s.name for s in want}
            and len(generations) == 1
            and all(canonical(have[s.name].get("spec") or {}) == canonical(s.spec) for s in want)
        )
        if intact:
            self.generation = generations.pop()
            self._metrics.pool_generation.set(self.generation)
            self._set(True, None)
            return False
        generation = max(generations, default=0) + 1
        for spec in want:
            doc = self._document(spec, generation, have.get(spec.name))
            op = "update" if spec.name in have else "create"
            await self._write(op, spec.name, doc)
        for name in sorted(set(have) - {s.name for s in want}):
            await self._write("delete", name, None)
        self.generation = generation
        self._metrics.pool_generation.set(generation)
        log.info(
            "slices.published",
            node=self._node,
            driver=DRIVER,
            generation=generation,
            slices=len(want),
            unhealthy=",".join(map(str, sorted(self._unhealthy))),
            replaced=len(have),
        )
        self._set(True, None)
        return True

    def _document(self, spec: SliceSpec, generation: int, existing: Mapping[str, Any] | None) -> dict[str, Any]:
        body = dict(spec.spec)
        body["pool"] = {**body["pool"], "generation": generation}
        metadata: dict[str, Any] = {"name": spec.name, "labels": {"app.kubernetes.io/managed-by": "neuron-dra-driver"}}
        if self._owner is not None:
            metadata["ownerReferences"] = [self._owner]
        if existing is not None:
            metadata["resourceVersion"] = (existing.get("metadata") or {}).get("resourceVersion")
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": metadata, "spec": body}

    async def _write(self, op: str, name: str, doc: dict[str, Any] | None) -> None:
        assert self._api is not None
        api = self._api
        try:
            if op == "create":
                await in_daemon_thread(api.create_slice, doc)
            elif op == "update":
                await in_daemon_thread(api.replace_slice, name, doc)
            else:
                await in_daemon_thread(api.delete_slice, name)
        except KubeApiError:
            self._metrics.slice_writes.labels(op, "error").inc()
            raise
        self._metrics.slice_writes.labels(op, "ok").inc()
