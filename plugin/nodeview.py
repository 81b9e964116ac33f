"""The plugin's own view of the node: health, what pods hold, and allocations kubelet has not reported yet.

Kubelet tracks `neuron`, `neurondevice` and `neuroncore` as unrelated resources, so its `available` list for
one can include hardware held through another. This view is what closes that gap: it is read by
GetPreferredAllocation and Allocate, and published as node annotations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from neuronalloc import DEVICE_RESOURCES, NodeState, Resource, Topology, free_sets, usable_through
from neuronlog import get_logger
from plugin.podresources import PodHoldings

log = get_logger(__name__)

# An allocation PodResources never shows was rejected by kubelet after Allocate (admission failed); it
# stops counting after this long. Kubelet records devices right after Allocate, so the window is short.
PENDING_TTL_SECONDS = 30.0
# PodResources is read every 2 s (publisher.POLL_SECONDS). A last successful read older than this means kubelet
# has stopped answering, and what is in use is unknown: allocation decisions refuse until a fresh read.
MAX_PODRESOURCES_AGE_SECONDS = 10.0


class PodResourcesStatus(StrEnum):
    FRESH = "fresh"
    NEVER_READ = "never_read"
    STALE = "stale"


class Changes:
    """A version counter that waiters can block on: `await changes.wait_past(seen)`."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_past(self, seen: int) -> int:
        while self.version == seen:
            await self._event.wait()
        return self.version


@dataclass(frozen=True)
class PendingAllocation:
    resource: Resource
    ids: frozenset[int]
    at: float


class Ledger:
    """Allocations this process made that the last PodResources answer did not show yet."""

    def __init__(self, ttl: float = PENDING_TTL_SECONDS) -> None:
        self._ttl = ttl
        self._pending: list[PendingAllocation] = []

    def record(self, resource: Resource, ids: frozenset[int], now: float) -> None:
        self._pending.append(PendingAllocation(resource, ids, now))

    def reconcile(self, holdings: PodHoldings, now: float) -> None:
        self._pending = [p for p in self._pending if not p.ids <= holdings.held(p.resource) and now - p.at < self._ttl]

    def used(self, resource: Resource) -> frozenset[int]:
        """IDs pending through this one resource name."""
        return frozenset().union(*(p.ids for p in self._pending if p.resource is resource))


@dataclass(frozen=True)
class Usage:
    """Free and used hardware at one moment, under the shared-hardware rule."""

    used_devices: frozenset[int]
    used_cores: frozenset[int]
    unhealthy_devices: frozenset[int]
    free_devices: frozenset[int]
    free_cores: frozenset[int]


class NodeView:
    def __init__(
        self,
        topology: Topology,
        read_holdings: Callable[[], Awaitable[PodHoldings]],
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.topology = topology
        self._wall_clock = wall_clock
        self._read_holdings = read_holdings
        self._clock = clock
        self.ledger = Ledger()
        self.unhealthy: Mapping[int, str] = {}
        self.holdings = PodHoldings(pods={})
        self.observed_at: datetime | None = None  # None until PodResources first answered
        self.read_at: float | None = None  # clock time of the last successful PodResources read
        self.first_read = asyncio.Event()  # set once PodResources has answered
        self.health_changes = Changes()  # device lists for ListAndWatch
        self._refresh_lock = asyncio.Lock()

    # -- inputs ------------------------------------------------------------------------------------------
    def set_unhealthy(self, unhealthy: Mapping[int, str]) -> None:
        self.unhealthy = dict(unhealthy)
        self.health_changes.bump()

    def record_allocation(self, resource: Resource, ids: frozenset[int]) -> None:
        self.ledger.record(resource, ids, self._clock())

    async def refresh(self) -> None:
        """Read PodResources once. Concurrent callers share one read. Raises PodResourcesUnavailable."""
        if self._refresh_lock.locked():
            async with self._refresh_lock:  # a read is in flight: its answer is as fresh as ours would be
                return
        async with self._refresh_lock:
            holdings = await self._read_holdings()
            self.holdings = holdings
            self.observed_at = self._wall_clock().replace(microsecond=0)
            self.read_at = self._clock()
            self.ledger.reconcile(holdings, self.read_at)
            self.first_read.set()

    # -- freshness ---------------------------------------------------------------------------------------
    def podresources_age(self) -> float | None:
        """Seconds since the last successful PodResources read; None before the first."""
        return None if self.read_at is None else max(self._clock() - self.read_at, 0.0)

    def podresources_status(self) -> PodResourcesStatus:
        age = self.podresources_age()
        if age is None:
            return PodResourcesStatus.NEVER_READ
        return PodResourcesStatus.STALE if age > MAX_PODRESOURCES_AGE_SECONDS else PodResourcesStatus.FRESH

    def podresources_problem(self) -> str | None:
        """Why the view cannot say what is in use (never read, or read too long ago); None when it can.

        Safe to call from another thread (it reads two floats)."""
        age = self.podresources_age()
        if age is None:
            return "kubelet's PodResources has not answered since the plugin started"
        if age > MAX_PODRESOURCES_AGE_SECONDS:
            return (
                f"the last successful read of kubelet's PodResources is {age:.1f} s old "
                f"(limit {MAX_PODRESOURCES_AGE_SECONDS:.0f} s)"
            )
        return None

    # -- views -------------------------------------------------------------------------------------------
    def is_healthy(self, device: int) -> bool:
        return device not in self.unhealthy

    def held(self, resource: Resource) -> frozenset[int]:
        """IDs held through this one resource name: by pods, or allocated and not yet shown by PodResources."""
        return self.holdings.held(resource) | self.ledger.used(resource)

    def used(self, resource: Resource) -> frozenset[int]:
        """Devices in use as whole devices (under either device name), or cores in use (NEURONCORE)."""
        if resource.whole_devices:
            pending = frozenset().union(*(self.ledger.used(r) for r in DEVICE_RESOURCES))
            return self.holdings.used_devices | pending
        return self.holdings.used_cores | self.ledger.used(Resource.NEURONCORE)

    def usage(self) -> Usage:
        used_devices, used_cores = self.used(Resource.NEURON), self.used(Resource.NEURONCORE)
        unhealthy = frozenset(self.unhealthy)
        free_devices, free_cores = free_sets(self.topology, used_devices, used_cores, unhealthy)
        return Usage(used_devices, used_cores, unhealthy, free_devices, free_cores)

    def usable(self, resource: Resource) -> frozenset[int]:
        """IDs of `resource` that health and the *other* resource names' holdings leave usable.

        The resource's own holdings are left to kubelet, whose `available` list is authoritative for them and
        fresher than PodResources when a pod has just ended.
        """
        held = {name: self.held(name) for name in Resource if name is not resource}
        return usable_through(self.topology, resource, held, frozenset(self.unhealthy))

    def node_state(
        self, usage: Usage | None = None, *, not_serving_reason: str | None = None, plugin_address: str = ""
    ) -> NodeState | None:
        """The state to publish, or None before PodResources has answered once.

        Pass `usage` when it was just computed, to spare a second free_sets over the same inputs.
        """
        if self.observed_at is None:
            return None
        if usage is None:
            usage = self.usage()
        return NodeState(
            topology=self.topology,
            free_devices=usage.free_devices,
            free_cores=usage.free_cores,
            unhealthy_devices=usage.unhealthy_devices,
            pods=self.holdings.pods,
            observed_at=self.observed_at,
            serving=not_serving_reason is None,
            not_serving_reason=not_serving_reason or "",
            plugin_address=plugin_address,
        )
