"""The bind verb: the last check before a pod is promised a block, and the one write that promises it.

Filter answers from a cache, and under a burst many pods pass filter for the same last block before any of them
is bound. Bind closes that gap:

1. Who binds. One replica at a time: the holder of the binder Lease (`extender.lease`). Any other replica
   forwards the bind to the holder, once (`extender.forward`); a forwarded bind reaching a replica that does not
   hold the Lease is refused, not forwarded again. Without a Lease (`--lease-name ""`) every replica binds on its
   own, which is safe with one replica only.
2. What it checks. The pod, from the filter and prioritize requests this replica saw (`extender.podcache`),
   else one GET: the UID the scheduler names, for our scheduler, asking for a Neuron resource, not bound
   already. The node: known to the watch, its published state serving, and its device plugin answering
   /readyz for this node now (`extender.probe`).
3. How it decides. From the watch-fed view plus this replica's own claims (bindings in flight, made, or of
   unknown outcome: `ClusterStore.hold`), under a per-node lock, with no read from the API server; its cost
   grows with the pods of that node, never with the cluster. Then one write: the Binding POST.
4. Why that is safe with any number of replicas. Every binding comes from the Lease holder (1). The holder
   counts each binding it starts, from before the POST until its watch shows the pod (3), so two of its binds
   never both take the last block. A new holder re-reads the pods bound in the cluster (a consistent list)
   before its first bind, and every write of the previous holder had its outcome before a new holder could
   exist (the time fence, `extender.lease`), so that list holds them all.
5. Deadlines. The scheduler stops waiting at its deadline (the handler timeout from the request's arrival, or
   the time a forwarding replica says is left), and a bind never completes after it: the node's lock is held
   until the POST has an outcome; the POST starts only with `min_post` seconds left, bounded by what remains
   (the client's timeout and the API server's own `timeout`) and by the Lease fence; the whole bind runs in a
   task of its own, which the handler's timeout cannot cancel half-way. A POST whose outcome is unknown (a
   timeout, a broken connection, a 5xx) keeps counting against the node until the watch shows the pod, or a GET
   `resolve_after` seconds later (long after the API server's deadline for it) shows it was not bound.

The loser of a race gets an `Error`; kube-scheduler forgets its assumption and retries the pod, and the next
filter already counts the winner.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from extender.cache import UNKNOWN
from extender.forward import Forwarder
from extender.kube import ApiException, KubeApi
from extender.lease import BinderLease
from extender.metrics import BIND_REASONS
from extender.podcache import SeenPods
from extender.probe import PluginProbe
from extender.verdicts import Verdicts
from extender.wire import BindingArgs, PodInfo, WireError, parse_pod
from neuronalloc.text import quote, shorten
from neuronlog import get_logger

__all__ = ["BIND_REASONS", "BindOutcome", "BindSettings", "Binder"]

log = get_logger(__name__)

# kube-apiserver's words for a pod that has a node already (pkg/registry/core/pod/storage).
_ALREADY_ASSIGNED = re.compile(r'already assigned to node "([^"]{1,253})"')


@dataclass(frozen=True, slots=True)
class BindSettings:
    scheduler_name: str = "neuron-contig-scheduler"
    reply_margin: float = 0.25  # kept back from the deadline for the answer to reach the scheduler
    min_post: float = 0.3  # a Binding POST with less time left than this is not started
    api_timeout: float = 10.0  # the longest one POST or GET may take
    resolve_after: float = 10.0  # an unknown outcome is looked up this long after its POST


class BindOutcome:
    """Why a bind did or did not happen: `error` is "" on success, else the text the scheduler shows.
    `reason` is one of BIND_REASONS; `forwarded` when another replica decided it."""

    __slots__ = ("error", "forwarded", "reason")

    def __init__(self, reason: str, error: str = "", *, forwarded: bool = False) -> None:
        self.reason = reason
        self.error = shorten(error, 600)
        self.forwarded = forwarded

    @property
    def ok(self) -> bool:
        return not self.error


def _status_message(err: ApiException) -> str:
    """The `message` of the Status the API server answered with (bounded), or "" if there is none."""
    body = getattr(err, "body", None)
    try:
        doc = orjson.loads(body[:65536]) if isinstance(body, (bytes, str)) else None
    except orjson.JSONDecodeError:
        return ""
    message = doc.get("message") if isinstance(doc, dict) else None
    return message[:2000] if isinstance(message, str) else ""


def _api_error(action: str, err: Exception) -> str:
    if isinstance(err, ApiException):
        return f"{action}: API server answered {err.status} {shorten(str(err.reason), 80)}"
    return f"{action}: {shorten(repr(err), 200)}"


class Binder:
    def __init__(
        self,
        api: KubeApi,
        verdicts: Verdicts,
        seen: SeenPods | None = None,
        *,
        settings: BindSettings = BindSettings(),  # noqa: B008 - frozen, shared safely
        lease: BinderLease | None = None,
        forwarder: Forwarder | None = None,
        probe: PluginProbe | None = None,
        refresh_pods: Callable[[], None] | None = None,
        on_outcome: Callable[[BindOutcome], None] = lambda outcome: None,
    ) -> None:
        self._api = api
        self._view = verdicts.store
        self._verdicts = verdicts
        self._seen = seen if seen is not None else SeenPods()
        self.settings = settings
        self.lease = lease  # main sets it once the listening port, hence the binder URL, is known
        self._forwarder = forwarder
        self._probe = probe
        self._refresh_pods = refresh_pods
        self._on_outcome = on_outcome
        # Binds wait on the API server in threads; their own pool, so a stalled API server cannot starve others.
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="bind")
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._tasks: set[asyncio.Task[BindOutcome]] = set()
        self._refreshed = 0  # the Lease generation whose pod view has been re-read
        self._refreshing: asyncio.Task[None] | None = None
        self._resolving: set[asyncio.Task[None]] = set()

    @property
    def seen(self) -> SeenPods:
        return self._seen

    def start(self, args: BindingArgs, deadline: float, *, forwarded: bool = False) -> asyncio.Task[BindOutcome]:
        """The bind as a task of its own: await it through `asyncio.shield`, so a handler timeout cannot cancel
        it while it holds a node's lock or waits on its POST."""
        task = asyncio.ensure_future(self._bind(args, deadline, forwarded))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def bind(self, args: BindingArgs, deadline: float | None = None) -> BindOutcome:
        """`start` and wait (with the handler timeout's worth of time when no deadline is given)."""
        loop = asyncio.get_running_loop()
        return await asyncio.shield(self.start(args, deadline if deadline is not None else loop.time() + 4.5))

    async def drained(self) -> None:
        """Until every bind started so far has its outcome."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in self._resolving:
            task.cancel()
        for client in (self._probe, self._forwarder):
            if client is not None:
                await client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _bind(self, args: BindingArgs, deadline: float, forwarded: bool) -> BindOutcome:
        try:
            outcome = await self._decide(args, deadline, forwarded)
        except Exception as err:  # a bug, not a refusal: the scheduler still gets an answer
            log.exception("bind.failed", pod=args.pod_key, node=args.node)
            outcome = BindOutcome("api_error", f"internal error while binding: {shorten(repr(err), 200)}")
        logger = log.bind(pod=args.pod_key, uid=args.pod_uid, node=args.node, forwarded=outcome.forwarded or None)
        if outcome.ok:
            logger.info("bind.bound", rule=outcome.reason)
        else:
            logger.warning("bind.refused", rule=outcome.reason, error=outcome.error)
        self._on_outcome(outcome)
        return outcome

    def _left(self, deadline: float) -> float:
        return deadline - asyncio.get_running_loop().time() - self.settings.reply_margin

    async def _decide(self, args: BindingArgs, deadline: float, forwarded: bool) -> BindOutcome:
        lease = self.lease
        if lease is not None:
            if not lease.settled.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lease.settled.wait(), max(0.0, self._left(deadline)))
            if not lease.holding:
                if forwarded:
                    return BindOutcome(
                        "not_binder",
                        f"this replica does not hold the binder lease {lease.settings.namespace}/"
                        f"{lease.settings.name} (it moved); a forwarded bind is not forwarded again: retry",
                    )
                return await self._forward(args, deadline)
            refused = await self._refreshed_view(lease, deadline)
            if refused is not None:
                return refused
        return await self._bind_here(args, deadline)

    # ---- forwarding -------------------------------------------------------------------------------------

    async def _forward(self, args: BindingArgs, deadline: float) -> BindOutcome:
        lease = self.lease
        assert lease is not None
        url = lease.holder_url
        if not url or lease.holder == lease.settings.identity or url == lease.settings.url or self._forwarder is None:
            return BindOutcome(
                "not_binder",
                f"no other replica holds the binder lease {lease.settings.namespace}/{lease.settings.name} "
                f"(holder {quote(lease.holder or 'none', 80)}, address {quote(url or 'none', 80)}); retry",
            )
        within = self._left(deadline)
        if within < self.settings.min_post:
            return BindOutcome("deadline", "no time left to forward the bind to the active binder")
        answered, error = await self._forwarder.forward(url, args, within=within)
        if not answered:
            return BindOutcome("forward_error", error, forwarded=True)
        return BindOutcome("ok" if not error else "forwarded", error, forwarded=True)

    def lease_changed(self, holding: bool) -> None:
        """The Lease's on_change: a new holder starts re-reading the pods at once, not on its first bind."""
        lease = self.lease
        idle = self._refreshing is None or self._refreshing.done()
        if holding and lease is not None and self._refresh_pods is not None and idle:
            self._refreshing = asyncio.ensure_future(self._refresh(lease.generation))

    async def _refreshed_view(self, lease: BinderLease, deadline: float) -> BindOutcome | None:
        """A replica that has just become the binder first re-reads every pod bound in the cluster (rule 4)."""
        generation = lease.generation
        if self._refreshed >= generation or self._refresh_pods is None:
            return None
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh(generation))
        try:
            await asyncio.wait_for(asyncio.shield(self._refreshing), max(0.0, self._left(deadline)))
        except TimeoutError:
            return BindOutcome(
                "deadline", "this replica has just become the active binder and is re-reading the pods bound in "
                "the cluster before its first bind; retry",
            )  # fmt: skip
        return None

    async def _refresh(self, generation: int) -> None:
        assert self._refresh_pods is not None
        before = self._view.lists_applied("pods")
        self._refresh_pods()
        await self._view.wait_for_list("pods", before)
        self._refreshed = generation
        log.info("bind.view_refreshed", generation=generation, rule="new binder: pods re-read before its first bind")

    # ---- binding here -----------------------------------------------------------------------------------

    async def _bind_here(self, args: BindingArgs, deadline: float) -> BindOutcome:
        found = await self._pod(args, deadline)
        if isinstance(found, BindOutcome):
            return found
        pod = found
        key, node = args.pod_key, args.node
        if args.pod_uid and pod.uid and pod.uid != args.pod_uid:
            return BindOutcome("mismatch", f"pod {key} has UID {quote(pod.uid, 60)}, not {quote(args.pod_uid, 60)}: "
                               "it was recreated")  # fmt: skip
        if pod.scheduler_name != self.settings.scheduler_name:
            return BindOutcome("not_ours", f"pod {key} is for scheduler {quote(pod.scheduler_name, 80)}, not "
                               f"{self.settings.scheduler_name}: this extender binds only its own pods")  # fmt: skip
        if pod.request.empty:
            return BindOutcome("no_neuron_request", f"pod {key} asks for no Neuron resource: this extender binds "
                               "only pods that do")  # fmt: skip
        refused = self._already_bound(pod) or self._node_refusal(node)
        if refused is not None:
            return refused
        state, _ = self._view.node_state(node)
        assert state is not None
        if state.plugin_address and self._probe is not None:
            within = self._left(deadline) - self.settings.min_post
            why = await self._probe.not_serving(state.plugin_address, node, within=within)
            if why:
                return BindOutcome("not_serving", f"node {node} cannot take pod {key} now: {why}")
        return await self._locked(pod, args, deadline)

    async def _pod(self, args: BindingArgs, deadline: float) -> PodInfo | BindOutcome:
        seen = self._seen.get(args.pod_key, args.pod_uid)
        if seen is not None:
            return seen
        timeout = min(self.settings.api_timeout, self._left(deadline) - self.settings.min_post)
        if timeout <= 0:
            return BindOutcome("deadline", f"no time left to read pod {args.pod_key}")
        try:
            doc = await self._run(self._api.get_pod, args.pod_namespace, args.pod_name, timeout=timeout)
        except ApiException as err:
            if err.status == 404:
                return BindOutcome("not_found", f"pod {args.pod_key} does not exist (deleted?)")
            return BindOutcome("api_error", _api_error(f"reading pod {args.pod_key}", err))
        except Exception as err:
            return BindOutcome("api_error", _api_error(f"reading pod {args.pod_key}", err))
        try:
            return parse_pod(doc)
        except WireError as err:
            return BindOutcome("api_error", f"pod {args.pod_key} from the API server is malformed: {err}")

    def _already_bound(self, pod: PodInfo) -> BindOutcome | None:
        where = pod.node_name or self._view.bound_node(pod.key)
        if where:
            return BindOutcome("already_bound", f"pod {pod.key} is already bound to node {where}")
        return None

    def _node_refusal(self, node: str) -> BindOutcome | None:
        state, problem = self._view.node_state(node)
        if state is None:
            return BindOutcome("unknown_node", f"node {node}: (unknown) {problem}")
        if not state.serving:
            return BindOutcome("not_serving", f"node {node}: its device plugin is not serving: "
                               f"{state.not_serving_reason}")  # fmt: skip
        return None

    async def _locked(self, pod: PodInfo, args: BindingArgs, deadline: float) -> BindOutcome:
        node = args.node
        lock = self._locks.setdefault(node, asyncio.Lock())
        self._lock_users[node] = self._lock_users.get(node, 0) + 1
        try:
            try:
                async with asyncio.timeout(max(0.0, self._left(deadline) - self.settings.min_post)):
                    await lock.acquire()
            except TimeoutError:
                return BindOutcome("deadline", f"other binds to node {node} took the time left for pod {pod.key}")
            try:
                return await self._decide_and_post(pod, args, deadline)
            finally:
                lock.release()
        finally:
            self._lock_users[node] -= 1
            if not self._lock_users[node]:
                del self._lock_users[node], self._locks[node]

    async def _decide_and_post(self, pod: PodInfo, args: BindingArgs, deadline: float) -> BindOutcome:
        key, node = pod.key, args.node
        # What other binds to this node, or the watch, changed while this one waited for the lock.
        refused = self._already_bound(pod) or self._node_refusal(node)
        if refused is not None:
            return refused
        state, _ = self._view.node_state(node)
        assert state is not None
        verdict = self._verdicts.judge_for_bind(node, state, pod)
        if not verdict.fits:
            because = f"{verdict.reason} ({verdict.detail})" if verdict.detail else verdict.reason
            return BindOutcome(verdict.kind, f"pod {key} no longer fits node {node}: {because}")
        budget = min(self.settings.api_timeout, self._left(deadline))
        if self.lease is not None:
            budget = min(budget, self.lease.usable_for())
        if budget < self.settings.min_post:
            fenced = self.lease is not None and self.lease.usable_for() < self.settings.min_post
            return BindOutcome("deadline", f"pod {key} was not bound to {node}: " + (
                "this replica's binder lease is not renewed for long enough to finish a binding (API server "
                "unreachable?); retry" if fenced else "no time left before the scheduler's deadline"))  # fmt: skip
        self._view.hold(pod, node)
        try:
            if self._api.binds_on_loop:
                await self._api.bind_async(args.pod_namespace, args.pod_name, pod.uid, node, timeout=budget)
            else:
                await self._run(self._api.bind, args.pod_namespace, args.pod_name, pod.uid, node, timeout=budget)
        except asyncio.CancelledError:  # only at shutdown (the handler's timeout cannot reach this task)
            self._view.unresolved(key)
            raise
        except ApiException as err:
            return self._refused_by_api(pod, args, err)
        except Exception as err:  # a timeout or a broken connection: the binding may or may not exist
            return self._unknown(pod, node, _api_error(f"binding pod {key} to {node}", err))
        self._view.confirm(key)
        self._seen.forget(key)
        return BindOutcome("ok")

    def _refused_by_api(self, pod: PodInfo, args: BindingArgs, err: ApiException) -> BindOutcome:
        key, node = pod.key, args.node
        message = _api_error(f"binding pod {key} to {node}", err)
        if err.status is not None and (err.status >= 500 or err.status == 408):
            return self._unknown(pod, node, message)  # e.g. 504: the server's deadline passed mid-write
        assigned = _ALREADY_ASSIGNED.search(_status_message(err))
        if err.status == 409 and assigned:
            where = assigned.group(1)
            if where != node:  # bound elsewhere (an earlier attempt that timed out, say): count it there
                self._view.hold(pod, where)
            self._view.confirm(key)  # until the watch shows it
            return BindOutcome("already_bound", f"pod {key} is already bound to node {where}")
        self._view.release(key)
        if err.status == 404:
            return BindOutcome("not_found", f"pod {key} does not exist (deleted?)")
        if err.status == 409:
            return BindOutcome("mismatch", f"{message}: the pod changed (recreated?)")
        return BindOutcome("api_error", message)

    def _unknown(self, pod: PodInfo, node: str, message: str) -> BindOutcome:
        self._view.unresolved(pod.key)
        task = asyncio.ensure_future(self._resolve_later(pod, node))
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)
        return BindOutcome(
            "outcome_unknown", f"{message}; whether the binding exists is unknown: it counts against node {node} "
            "until the pod watch shows it or a later read shows it was not made",
        )  # fmt: skip

    async def _resolve_later(self, pod: PodInfo, node: str) -> None:
        """Look the pod up once the API server's deadline for the POST is long past: a binding not there then
        was never made, and the claim goes."""
        for _ in range(3):
            await asyncio.sleep(self.settings.resolve_after)
            if self._view.claim_of(pod.key) != (node, UNKNOWN):
                return  # the watch showed it, or another bind settled it
            try:
                doc = await self._run(self._api.get_pod, pod.namespace, pod.name, timeout=self.settings.api_timeout)
                where = parse_pod(doc).node_name
            except ApiException as err:
                if err.status != 404:
                    continue
                where = ""
            except Exception:  # the API server is unreachable: keep counting, look again
                continue
            if self._view.claim_of(pod.key) == (node, UNKNOWN) and where != node:
                self._view.release(pod.key)
                log.info("bind.resolved", pod=pod.key, node=node, bound_to=where or None,
                         rule="a binding of unknown outcome was not made on this node")  # fmt: skip
            return

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
