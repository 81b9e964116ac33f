"""The one active binder: a `coordination.k8s.io/v1` Lease that one extender replica at a time holds.

Replicas compete for the Lease the way client-go's leader election does: read it; create it if it is absent;
renew it (a PUT with its resourceVersion as the precondition, so two writers cannot both succeed) while holding
it; take it over only when its holder has not renewed it for a full `leaseDurationSeconds`, as measured on the
taker's own clock from when it first saw the holder's latest record. The holder publishes where it answers
`/bind` in the annotation `neuron-contig.io/binder-url`; the other replicas forward binds there.

Time fences the holder (`usable_for`). Let `t` be when the holder sent its last successful renewal. The record
that renewal wrote exists only after `t`, so a replica that saw it saw it after `t`, and can take over no sooner
than `t + duration` (clock rates differ by far less than `margin` over one duration; nothing here compares two
machines' clocks). The holder therefore starts a write only if it will have an outcome by
`t + duration - margin`: the write is bounded by a client timeout and by the same deadline on the API server
(`KubeApi.bind`), so it is neither pending nor in progress when a successor can exist. `margin` also covers the
delivery of a request to the API server after it was sent. A holder that cannot renew keeps binding until its
fence leaves no room, then refuses; it never needs to learn that it lost the Lease in order to be safe.

On a graceful stop, the holder first stops binding, waits for its binds in flight to finish, and then hands the
Lease back (holderIdentity ""), so a successor takes over at once instead of after a full duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from extender.kube import ApiException, KubeApi
from extender.ratelog import Throttle
from neuronlog import get_logger

__all__ = ["URL_ANNOTATION", "BinderLease", "LeaseSettings", "binder_identity"]

log = get_logger(__name__)

URL_ANNOTATION = "neuron-contig.io/binder-url"


def binder_identity() -> str:
    """This process's identity in the Lease: the host (pod) name and a random part, so that a restarted process
    is a new holder (it must wait out, or be handed, the previous one's Lease; see the module docstring)."""
    return f"{socket.gethostname()[:200]}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    url: str  # where this replica answers /bind: http(s)://ip:port
    duration: float = 15.0
    renew_every: float = 2.0
    margin: float = 1.0

    @property
    def call_timeout(self) -> float:
        return max(0.5, min(self.renew_every, self.duration / 4))


def _micro_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _valid_url(text: Any) -> str:
    """The binder URL from a Lease annotation, or "" if it is not a plain http(s)://host:port."""
    if not isinstance(text, str) or len(text) > 300:
        return ""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.path not in ("", "/"):
        return ""
    return text.rstrip("/")


class BinderLease:
    def __init__(
        self,
        api: KubeApi,
        settings: LeaseSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] = lambda holding: None,
    ) -> None:
        self.settings = settings
        self._api = api
        self._clock = clock
        self._wall = wall
        self._on_change = on_change
        # One thread of its own: binds stalled on a slow API server must never delay a renewal.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")
        self._throttle = Throttle()
        self.holding = False
        self.holder = ""  # identity of the holder as last read
        self.holder_url = ""  # where the holder answers /bind, as last read
        self.generation = 0  # times this process became the holder
        self.settled = asyncio.Event()  # the first round is done: holder or not is known
        self._renewed_at = float("-inf")  # when this process sent its last successful renewal (or acquisition)
        self._seen_version = ""
        self._seen_at = 0.0
        self._record: Any = None
        self._stepping_down = False

    def usable_for(self) -> float:
        """Seconds in which a write this replica starts now is sure to have its outcome before another replica
        can hold the Lease (0 when it does not hold it). See the module docstring."""
        if not self.holding or self._stepping_down:
            return 0.0
        return max(0.0, self._renewed_at + self.settings.duration - self.settings.margin - self._clock())

    async def run(self) -> None:
        while True:
            try:
                await self._round()
            except Exception as err:  # an API error: the fence shrinks on its own; try again next round
                suppressed = self._throttle.admit("round_failed")
                if suppressed is not None:
                    log.warning("lease.round_failed", lease=self.settings.name, error=repr(err)[:300],
                                suppressed=suppressed, usable_for_seconds=round(self.usable_for(), 2))  # fmt: skip
            self.settled.set()
            await asyncio.sleep(self.settings.renew_every)

    async def step_down(self, drained: Callable[[], Awaitable[None]]) -> None:
        """Stop binding, wait for `drained` (the binds in flight), then hand the Lease back."""
        self._stepping_down = True
        if not self.holding:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(drained(), self.settings.duration)
        record = self._record
        if record is None:
            return
        spec = dict(record.get("spec") or {})
        spec["holderIdentity"] = ""
        spec["renewTime"] = _micro_time(self._wall())
        try:
            await self._call(self._api.replace_lease, self.settings.namespace, self.settings.name,
                             {**record, "spec": spec})  # fmt: skip
            log.info("lease.released", lease=self.settings.name, identity=self.settings.identity)
        except Exception as err:
            log.warning("lease.release_failed", lease=self.settings.name, error=repr(err)[:300],
                        rule="the next holder takes over once the lease expires")  # fmt: skip
        self._set_holding(False)

    async def _round(self) -> None:
        s = self.settings
        record = await self._call(self._api.get_lease, s.namespace, s.name)
        now = self._clock()
        if record is None:
            await self._write(None, transitions=0, acquiring=True)
            return
        meta = record.get("metadata") or {}
        spec = record.get("spec") or {}
        version = str(meta.get("resourceVersion") or "")
        if version != self._seen_version:
            self._seen_version, self._seen_at = version, now
        holder = spec.get("holderIdentity") or ""
        holder = holder if isinstance(holder, str) else ""
        self.holder = holder
        self.holder_url = _valid_url((meta.get("annotations") or {}).get(URL_ANNOTATION))
        duration = spec.get("leaseDurationSeconds")
        their_duration = float(duration) if isinstance(duration, int) and 0 < duration < 3600 else s.duration
        transitions = spec.get("leaseTransitions")
        transitions = transitions if isinstance(transitions, int) and transitions >= 0 else 0
        if self._stepping_down:
            return
        if holder == s.identity:
            await self._write(record, transitions=transitions, acquiring=False)
        elif not holder or now >= self._seen_at + their_duration:
            await self._write(record, transitions=transitions + 1, acquiring=True)
        elif self.holding:
            self._set_holding(False)  # someone else holds it (we stopped binding when our fence ran out)

    async def _write(self, record: Any, *, transitions: int, acquiring: bool) -> None:
        s = self.settings
        wall = _micro_time(self._wall())
        spec = dict((record or {}).get("spec") or {})
        spec.update(holderIdentity=s.identity, leaseDurationSeconds=int(s.duration), renewTime=wall,
                    leaseTransitions=transitions)  # fmt: skip
        if acquiring:
            spec["acquireTime"] = wall
        meta = dict((record or {}).get("metadata") or {"name": s.name, "namespace": s.namespace})
        meta["annotations"] = {**(meta.get("annotations") or {}), URL_ANNOTATION: s.url}
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
        sent = self._clock()
        try:
            if record is None:
                written = await self._call(self._api.create_lease, s.namespace, lease)
            else:
                written = await self._call(self._api.replace_lease, s.namespace, s.name, lease)
        except ApiException as err:
            if err.status == 409:  # another replica wrote first: read again next round
                return
            raise
        self._record = written
        self._renewed_at = sent
        self.holder, self.holder_url = s.identity, s.url
        self._seen_version = str((written.get("metadata") or {}).get("resourceVersion") or "")
        self._seen_at = sent
        if not self.holding:
            self.generation += 1
            log.info("lease.acquired", lease=s.name, namespace=s.namespace, identity=s.identity, url=s.url,
                     transitions=transitions)  # fmt: skip
            self._set_holding(True)

    def _set_holding(self, holding: bool) -> None:
        if holding != self.holding:
            self.holding = holding
            if not holding:
                log.info("lease.lost", lease=self.settings.name, identity=self.settings.identity,
                         holder=self.holder or None)  # fmt: skip
            self._on_change(holding)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        timeout = self.settings.call_timeout
        return await loop.run_in_executor(self._executor, lambda: fn(*args, timeout=timeout))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
