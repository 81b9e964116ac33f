"""The bind verb: the last check before a pod is promised a block, made on fresh state under a per-node lock.

Filter answers from a cache, and under a burst many pods pass filter for the same last block before any of them
is bound. Binding here closes that gap: for each node, one bind at a time re-reads the node's annotations and
the pods bound to it from the API server (a quorum read, so every binding already made is in it), predicts
their blocks with the plugin's allocator, and binds only if the pod still fits. The loser gets an `Error`;
kube-scheduler then forgets its assumption and retries the pod, and the next filter sees the winner.

The binding is remembered in the cache until the pod watch shows it, so filters answered in between do not
promise the block again. Nothing else is kept: a restarted replica reads everything back from the API server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from extender.cache import ClusterView, active_pending_pod
from extender.fit import PendingPod, judge_node
from extender.kube import ApiException, KubeApi
from extender.wire import BindingArgs, WireError, parse_node, parse_pod
from neuronalloc import NodeStateError, decode_node_state
from neuronlog import get_logger

__all__ = ["BindOutcome", "Binder"]

log = get_logger(__name__)


class BindOutcome:
    """Why a bind did or did not happen: `error` is "" on success, else the text the scheduler shows.
    `reason` is the metric/log rule (ok | no_block | unresolvable | unknown_node | api_error | mismatch)."""

    __slots__ = ("error", "reason")

    def __init__(self, reason: str, error: str = "") -> None:
        self.reason = reason
        self.error = error

    @property
    def ok(self) -> bool:
        return not self.error


def _api_error(action: str, err: Exception) -> str:
    if isinstance(err, ApiException):
        return f"{action}: API server answered {err.status} {err.reason}"
    return f"{action}: {err!r}"


class Binder:
    def __init__(self, api: KubeApi, view: ClusterView) -> None:
        self._api = api
        self._view = view
        self._locks: dict[str, asyncio.Lock] = {}

    async def bind(self, args: BindingArgs) -> BindOutcome:
        lock = self._locks.setdefault(args.node, asyncio.Lock())
        async with lock:
            outcome = await self._bind_locked(args)
        logger = log.bind(pod=args.pod_key, uid=args.pod_uid, node=args.node)
        if outcome.ok:
            logger.info("bind.bound", rule=outcome.reason)
        else:
            logger.warning("bind.refused", rule=outcome.reason, error=outcome.error)
        return outcome

    async def _bind_locked(self, args: BindingArgs) -> BindOutcome:
        try:
            pod_doc, node_doc, bound_docs = await asyncio.gather(
                asyncio.to_thread(self._api.get_pod, args.pod_namespace, args.pod_name),
                asyncio.to_thread(self._api.get_node, args.node),
                asyncio.to_thread(self._api.pods_on_node, args.node),
            )
        except Exception as err:
            return BindOutcome("api_error", _api_error(f"reading pod {args.pod_key} and node {args.node}", err))
        try:
            pod = parse_pod(pod_doc)
            node = parse_node(node_doc)
        except WireError as err:
            return BindOutcome("api_error", f"API server object is malformed: {err}")
        if args.pod_uid and pod.uid and pod.uid != args.pod_uid:
            return BindOutcome(
                "mismatch", f"pod {args.pod_key} has UID {pod.uid}, not {args.pod_uid}: it was recreated"
            )
        if pod.node_name:
            if pod.node_name == args.node:
                return BindOutcome("ok")  # a retried bind that already happened: nothing to do
            return BindOutcome("mismatch", f"pod {args.pod_key} is already bound to {pod.node_name}")
        try:
            state = decode_node_state(node.annotations)
        except NodeStateError as err:
            return BindOutcome("unknown_node", f"node {args.node}: (unknown) node state annotations: {err}")
        verdict = judge_node(state, self._bound_elsewhere(args, bound_docs), pod.request)
        if not verdict.fits:
            because = f"{verdict.reason} ({verdict.detail})" if verdict.detail else verdict.reason
            return BindOutcome(verdict.kind, f"pod {args.pod_key} no longer fits node {args.node}: {because}")
        try:
            await asyncio.to_thread(self._api.bind, args.pod_namespace, args.pod_name, pod.uid, args.node)
        except Exception as err:
            return BindOutcome("api_error", _api_error(f"binding pod {args.pod_key} to {args.node}", err))
        self._view.remember_binding(pod, args.node)
        return BindOutcome("ok")

    def _bound_elsewhere(self, args: BindingArgs, bound_docs: list[Any]) -> list[PendingPod]:
        """Pods the API server says are bound to the node, plus this replica's bindings it may not show yet."""
        claims: dict[str, PendingPod] = {}
        for doc in bound_docs:
            try:
                claim = active_pending_pod(parse_pod(doc))
            except WireError as err:
                log.warning("bind.pod_skipped", node=args.node, rule="pod object shape", error=str(err))
                continue
            if claim is not None:
                claims[claim.key] = claim
        self._view.expire_remembered()
        return [c for c in self._view.with_remembered(args.node, claims) if c.key != args.pod_key]
