"""NodePrepareResources and NodeUnprepareResources decisions, without gRPC.

Prepare, per claim (the first broken rule is the claim's error; kubelet retries the pod):
  0. bad_reference   - kubelet's namespace/name/uid are not names                 (refused as given)
  1. already         - prepared before: the same devices again (idempotent; no API call)
  2. unknown_holding - a record of this driver cannot be read: what it holds is unknown (fail closed)
  3. api             - the claim cannot be read from the API server
  4. allocation      - not allocated, another node's pool, not our block names, or blocks that are not one block
  5. unhealthy       - the block uses an unhealthy device now
  6. overlap         - the block shares hardware with a claim prepared here (the scheduler's view and the node's
                       disagree: never hand out the same hardware twice)
Unprepare forgets the claim (record and CDI spec); unknown or already forgotten claims are fine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from neuronalloc import Topology, encode_ranges
from neuronlog import get_logger
from plugin.dra.claims import Allocation, ClaimError, ClaimRef, check_ref, read_allocation
from plugin.dra.store import PreparedClaim, Store
from plugin.kubeapi import KubeApiError

log = get_logger(__name__)

FetchClaim = Callable[[str, str], Awaitable[Any]]


@dataclass(frozen=True)
class Prepared:
    prepared: PreparedClaim | None = None
    error: str = ""
    rule: str = ""


class Preparer:
    def __init__(
        self,
        topo: Topology,
        pool: str,
        store: Store,
        fetch_claim: FetchClaim,
        unhealthy: Callable[[], Mapping[int, str]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.topo = topo
        self.pool = pool
        self.store = store
        self._fetch = fetch_claim
        self._unhealthy = unhealthy
        self._on_change = on_change

    async def prepare(self, namespace: str, name: str, uid: str) -> Prepared:
        try:
            ref = check_ref(namespace, name, uid)
        except ClaimError as error:
            return self._refuse(None, "bad_reference", str(error))
        known = self.store.claims.get(ref.uid)
        if known is not None:
            return Prepared(known, rule="already")
        if self.store.unknown:
            uid_, why = next(iter(self.store.unknown.items()))
            return self._refuse(
                ref,
                "unknown_holding",
                f"claim {ref.key}: refused because the record of prepared claim {uid_} cannot be read ({why}), so "
                "the hardware in use is unknown; it clears when kubelet unprepares that claim",
            )
        try:
            doc = await self._fetch(ref.namespace, ref.name)
        except KubeApiError as error:
            return self._refuse(ref, "api", f"claim {ref.key}: cannot read it from the API server: {error}")
        try:
            allocation = read_allocation(doc, ref, self.topo, self.pool)
        except ClaimError as error:
            return self._refuse(ref, "allocation", str(error))
        # From here to store.add nothing awaits: the checks and the record are one step on the event loop, so two
        # prepares at once cannot both take the same hardware.
        refusal = self._check(allocation)
        if refusal is not None:
            return refusal
        prepared = self.store.add(allocation)
        grant = allocation.grant
        log.info(
            "claim.prepared",
            claim=ref.key,
            uid=ref.uid,
            resource=grant.resource.value,
            ids=encode_ranges(grant.ids),
            devices=",".join(r.block.name for r in allocation.results),
            cdi=prepared.cdi_id,
        )
        self._on_change()
        return Prepared(prepared)

    def _check(self, allocation: Allocation) -> Prepared | None:
        ref, grant = allocation.claim, allocation.grant
        sick = self._unhealthy()
        bad = [d for d in grant.devices if d in sick]
        if bad:
            reasons = "; ".join(f"{d}: {sick[d]}" for d in bad)
            return self._refuse(
                ref,
                "unhealthy",
                f"claim {ref.key}: {grant.resource.value} [{encode_ranges(grant.ids)}] uses unhealthy devices "
                f"[{encode_ranges(bad)}] ({reasons})",
            )
        holder = self.store.holder_of(grant)
        if holder is not None:
            return self._refuse(
                ref,
                "overlap",
                f"claim {ref.key}: {grant.resource.value} [{encode_ranges(grant.ids)}] shares hardware with claim "
                f"{holder.key} prepared on this node",
            )
        return None

    def _refuse(self, ref: ClaimRef | None, rule: str, message: str) -> Prepared:
        log.warning("claim.prepare_refused", claim=ref.key if ref else "", uid=ref.uid if ref else "", rule=rule,
                    message=message)  # fmt: skip
        return Prepared(error=message, rule=rule)

    def unprepare(self, namespace: str, name: str, uid: str) -> str:
        """ "" when the claim is (now) unprepared, else why not."""
        # Only the UID names the record: a claim that is gone may come with any name, and must still be forgotten.
        try:
            ref = check_ref("x", "x", uid)
        except ClaimError as error:
            log.warning("claim.unprepare_refused", rule="bad_reference", message=str(error))
            return str(error)
        try:
            removed = self.store.remove(ref.uid)
        except OSError as error:
            message = f"claim {ref.uid}: cannot remove its record or CDI spec: {error.strerror}"
            log.error("claim.unprepare_failed", uid=ref.uid, message=message)
            return message
        if removed:
            log.info("claim.unprepared", claim=f"{namespace}/{name}"[:320], uid=ref.uid)
            self._on_change()
        return ""
