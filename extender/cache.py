"""The extender's view of the cluster: nodes and bound pods as the API server's watches report them.

Nothing here is the source of truth. Every entry is rebuilt from a list + watch of the API server, so any
replica, and any restart, converges to the same view. The one thing held only in memory is a claim for a
binding this replica is making or made that its pod watch has not shown yet (`hold`: the Binding POST is in
flight; `confirm`: it succeeded; `unresolved`: its outcome is unknown, a timeout). A claim counts against its
node exactly like a bound pod; it is dropped the moment the watch shows the pod, when the bind is known to have
failed (`release`), or after `binding_ttl` (never while in flight), and it only ever makes the view more
conservative.

Speed: a verdict depends only on (node state, pods bound to it, request shape), so verdicts are memoised per
request shape, per node (`extender.answers`), and a node's entries are dropped the moment its state or its
pods change. A reply at 5,000 nodes is then built by C-level passes over the memo; a warmer recomputes dropped
entries between requests.

All methods run on the event loop thread; watch threads hand events over with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from extender.answers import FilterAnswer, FilterMemo, ScoreMemo, ShapeMemos
from extender.fit import PendingPod, Verdict, judge_node, not_serving, unknown
from extender.ratelog import Throttle
from extender.requests import PodRequest, Shape
from extender.wire import NodeInfo, PodInfo, WireError, object_key, parse_node, parse_pod
from neuronalloc import ANNOTATION_PREFIX, NodeState, NodeStateError, decode_node_state
from neuronalloc.nodestate import OBSERVED_AT
from neuronlog import get_logger

__all__ = ["ClusterView", "active_pending_pod", "state_key"]

log = get_logger(__name__)

StateKey = tuple[tuple[str, str], ...]
_Reply = TypeVar("_Reply")
_MEMO_LIMIT = 50_000  # request-mode memo entries before the memo is cleared (bounded memory, never wrong)
_RECENT_SHAPES = 16  # request shapes kept warm; a cluster runs a handful of pod sizes
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


_throttle = Throttle()


def _rejected(kind: str, err: Exception) -> None:
    """One malformed object: logged (at most one line per kind per interval), skipped, never fatal."""
    suppressed = _throttle.admit(("rejected", kind))
    if suppressed is not None:
        log.warning(
            "cache.object_rejected", kind=kind, error=str(err), suppressed=suppressed,
            rule="a malformed object is skipped; the list or watch goes on",
        )  # fmt: skip


def _isolated(kind: str, upsert: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """`upsert`, but an object that breaks it in a way its decoder did not foresee is skipped too: one object
    must never stop a list or a watch (the decoders raise only WireError; this is the second line)."""

    def guarded(doc: Any) -> str | None:
        try:
            return upsert(doc)
        except Exception as err:
            suppressed = _throttle.admit(("failed", kind))
            if suppressed is not None:
                log.exception("cache.object_failed", kind=kind, error=repr(err)[:300], suppressed=suppressed)
            return None

    return guarded


# In a state key, any well-formed observed-at reads as _VALID_TIME and a garbled one as "!" + its text, which
# can never equal _VALID_TIME (a garbled value may be the text "<valid>" itself).
_VALID_TIME = "<valid>"


def state_key(annotations: Mapping[str, str]) -> StateKey:
    """The part of a node's annotations the verdict depends on, as a hashable key.

    Not the value of `observed-at`: no verdict reads it, and the plugin rewrites it on every heartbeat (60 s)
    with nothing else changed; in the key, it would drop every node's memoised verdicts once a minute. Whether
    it is well formed stays in the key, so a state and a garbled copy of it never share a decoded entry."""
    items = [(k, v) for k, v in annotations.items() if k.startswith(ANNOTATION_PREFIX) and k != OBSERVED_AT]
    observed = annotations.get(OBSERVED_AT)
    if observed is not None:
        items.append((OBSERVED_AT, _VALID_TIME if _well_formed_time(observed) else "!" + observed))
    return tuple(sorted(items))


@functools.lru_cache(maxsize=65_536)
def _well_formed_time(text: str) -> bool:
    """What `decode_node_state` accepts for `observed-at` (RFC 3339 UTC, seconds, "Z"). Memoised: Nodes mode
    asks once per node per request, and a node's value repeats until its next heartbeat."""
    if len(text) != len("2026-01-01T00:00:00Z"):
        return False
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


def active_pending_pod(pod: PodInfo) -> PendingPod | None:
    """The pod as a claim on its node's devices, or None if it holds nothing (no Neuron need, or finished)."""
    if not pod.node_name or pod.phase in _TERMINAL_PHASES or pod.request.empty:
        return None
    return PendingPod(pod.key, pod.created, pod.request)


@dataclass
class _Node:
    key: StateKey
    state: NodeState | None
    problem: str  # why `state` is None


IN_FLIGHT, BOUND, UNKNOWN = "in_flight", "bound", "unknown"


@dataclass(slots=True)
class _Claim:
    node: str
    pod: PendingPod
    state: str  # IN_FLIGHT | BOUND | UNKNOWN
    at: float  # when it entered that state


class ClusterView:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, binding_ttl: float = 300.0) -> None:
        self._clock = clock
        self._binding_ttl = binding_ttl
        self._nodes: dict[str, _Node] = {}
        self._pod_node: dict[str, str] = {}  # pod key -> node name
        self._pods_on: dict[str, dict[str, PendingPod]] = {}  # node name -> pod key -> claim
        self._pods_version: dict[str, int] = {}  # node name -> bumps when its pod set changes
        self._claims: dict[str, _Claim] = {}  # pod key -> a binding of this replica the watch has not shown yet
        self._claims_on: dict[str, dict[str, _Claim]] = {}  # node -> pod key -> claim
        # Claims that can expire (not in flight), oldest first: expiry pops from the front.
        self._expiring: dict[str, float] = {}
        self._lists: dict[str, int] = {}  # kind -> full lists applied so far
        self._listed = asyncio.Event()
        self._decoded: dict[StateKey, NodeState | str] = {}
        self._request_memo: dict[tuple[StateKey, int, Shape, bool], Verdict] = {}
        self._synced: set[str] = set()
        # Request shapes seen lately (most recent last) and nodes whose verdicts changed since: the warmer
        # recomputes those verdicts between requests, so a filter finds them memoised.
        self._recent: dict[Shape, PodRequest] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_contact = clock()
        # Per recent shape, its verdicts by node; a node's are dropped from every shape in one place (`_changed`).
        self._memos: dict[Shape, ShapeMemos] = {}

    # ---- what the watches feed -------------------------------------------------------------------------

    def replace_nodes(self, docs: Iterable[Any]) -> None:
        self._replace("nodes", docs, self.upsert_node, self._nodes, self.delete_node)

    def upsert_node(self, doc: Any) -> str | None:
        self.touch()
        try:
            node = parse_node(doc)
        except WireError as err:
            _rejected("nodes", err)
            return None
        key = state_key(node.annotations)
        entry = self._nodes.get(node.name)
        if entry is not None and entry.key == key:
            return node.name
        state, problem = self._decode(key, node.annotations)
        self._nodes[node.name] = _Node(key, state, problem)
        self._changed(node.name)
        return node.name

    def delete_node(self, name: str) -> None:
        self.touch()
        if self._nodes.pop(name, None) is not None:
            self._changed(name)

    def replace_pods(self, docs: Iterable[Any]) -> None:
        self._replace("pods", docs, self.upsert_pod, self._pod_node, self.delete_pod)

    def _replace(
        self,
        kind: str,
        docs: Iterable[Any],
        upsert: Callable[[Any], str | None],
        held: Mapping[str, Any],
        delete: Callable[[str], None],
    ) -> None:
        """A full list: upsert every object, then delete what `held` still has that the list did not name."""
        seen = {key for key in map(_isolated(kind, upsert), docs) if key is not None}
        for key in set(held) - seen:
            delete(key)
        self.mark_synced(kind)

    def upsert_pod(self, doc: Any) -> str | None:
        self.touch()
        try:
            pod = parse_pod(doc)
        except WireError as err:
            _rejected("pods", err)
            return None
        if pod.node_name and pod.key in self._claims:
            self._drop_claim(pod.key)  # the watch carries it from here (on whichever node it shows)
        claim = active_pending_pod(pod)
        if claim is None:
            self.delete_pod(pod.key)
            return pod.key
        old_node = self._pod_node.get(pod.key)
        if old_node == pod.node_name and self._pods_on.get(pod.node_name, {}).get(pod.key) == claim:
            return pod.key
        if old_node is not None:
            self._unlink(pod.key, old_node)
        self._pod_node[pod.key] = pod.node_name
        self._pods_on.setdefault(pod.node_name, {})[pod.key] = claim
        self._bump_pods(pod.node_name)
        return pod.key

    def delete_pod(self, key: str) -> None:
        self.touch()
        if key in self._claims and self._claims[key].state != IN_FLIGHT:
            self._drop_claim(key)
        node = self._pod_node.pop(key, None)
        if node is not None:
            self._unlink(key, node)

    # ---- this replica's bindings (see the module docstring) --------------------------------------------

    def hold(self, pod: PodInfo, node: str) -> None:
        """A Binding POST for `pod` to `node` is about to be sent: count it against the node from now on."""
        self._set_claim(pod.key, _Claim(node, PendingPod(pod.key, pod.created, pod.request), IN_FLIGHT, 0.0))

    def confirm(self, key: str) -> None:
        """The Binding POST succeeded: keep counting it until the watch shows the pod (or `binding_ttl`)."""
        self._settle(key, BOUND)

    def unresolved(self, key: str) -> None:
        """The POST's outcome is unknown (it timed out, the connection broke): the binding may exist, so it keeps
        counting until the watch shows the pod, `release` says it does not exist, or `binding_ttl`."""
        self._settle(key, UNKNOWN)

    def release(self, key: str) -> None:
        """The binding does not exist (the API server refused it): stop counting it."""
        if key in self._claims:
            self._drop_claim(key)

    def remember_binding(self, pod: PodInfo, node: str) -> None:
        """A binding this replica made (`hold` then `confirm`), unless the watch already shows it there."""
        if pod.request.empty or self._pod_node.get(pod.key) == node:
            return
        self.hold(pod, node)
        self.confirm(pod.key)

    def claim_of(self, key: str) -> tuple[str, str] | None:
        """(node, state) of this replica's claim for the pod, if it has one."""
        claim = self._claims.get(key)
        return None if claim is None else (claim.node, claim.state)

    def bound_node(self, key: str) -> str:
        """The node the pod is bound to as far as this replica knows (watch, or a binding it made or is making
        now), else ""."""
        node = self._pod_node.get(key)
        if node:
            return node
        claim = self._claims.get(key)
        return claim.node if claim is not None and claim.state != UNKNOWN else ""

    def remembered_on(self, node: str) -> tuple[PendingPod, ...]:
        """This replica's claims on `node` the watch has not shown yet. Pure read: expiry happens before
        judging starts (`expire_remembered`), so the memo never changes in the middle of a request."""
        return tuple(c.pod for c in self._claims_on.get(node, {}).values())

    def _set_claim(self, key: str, claim: _Claim) -> None:
        if key in self._claims:
            self._drop_claim(key)
        self._claims[key] = claim
        self._claims_on.setdefault(claim.node, {})[key] = claim
        self._bump_pods(claim.node)

    def _settle(self, key: str, state: str) -> None:
        claim = self._claims.get(key)
        if claim is None:  # the watch showed the pod first: it already counts there
            return
        claim.state, claim.at = state, self._clock()
        self._expiring.pop(key, None)
        self._expiring[key] = claim.at  # to the back: the order stays oldest first

    def _drop_claim(self, key: str) -> None:
        claim = self._claims.pop(key)
        self._expiring.pop(key, None)
        on_node = self._claims_on[claim.node]
        del on_node[key]
        if not on_node:
            del self._claims_on[claim.node]
        self._bump_pods(claim.node)

    def apply(self, kind: str, event_type: str, objects: tuple[Any, ...]) -> None:
        """One reflector event: SYNC (a full list), ADDED / MODIFIED / DELETED, or CONTACT."""
        if event_type == "CONTACT":
            self.touch()
        elif event_type == "SYNC":
            (self.replace_nodes if kind == "nodes" else self.replace_pods)(objects)
        elif event_type in ("ADDED", "MODIFIED"):
            upsert = _isolated(kind, self.upsert_node if kind == "nodes" else self.upsert_pod)
            for doc in objects:
                upsert(doc)
        elif event_type == "DELETED":
            for doc in objects:
                try:
                    key = object_key(kind, doc)
                except WireError as err:
                    _rejected(kind, err)
                    continue
                (self.delete_node if kind == "nodes" else self.delete_pod)(key)

    def touch(self) -> None:
        """The API server was heard from (an event, a list, a bookmark, a fresh watch)."""
        self._last_contact = self._clock()

    def mark_synced(self, kind: str) -> None:
        self._synced.add(kind)
        self._lists[kind] = self._lists.get(kind, 0) + 1
        self._listed.set()
        self.touch()

    def lists_applied(self, kind: str) -> int:
        """How many full lists of `kind` the view has applied (a relist raises it)."""
        return self._lists.get(kind, 0)

    async def wait_for_list(self, kind: str, after: int) -> None:
        """Until more than `after` full lists of `kind` have been applied."""
        while self.lists_applied(kind) <= after:
            self._listed.clear()
            await self._listed.wait()

    # ---- what the verbs ask ----------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return {"nodes", "pods"} <= self._synced

    @property
    def size(self) -> int:
        return len(self._nodes)

    @property
    def warm_backlog(self) -> int:
        """Nodes whose verdicts for recent request shapes are still to be recomputed."""
        return len(self._dirty)

    def staleness_seconds(self) -> float:
        """Seconds since the API server was last heard from."""
        return max(0.0, self._clock() - self._last_contact)

    def filter_answer(self, names: Sequence[str], request: PodRequest) -> FilterAnswer:
        """NodeNames mode: filter's answer for `names`, from the memo; only nodes not judged yet cost Python."""
        memo = self._memos_for(request, note=True).unscored
        return self._read_filled(memo, memo.answer, names, request, scored=False)

    def priority_reply(self, names: Sequence[str], request: PodRequest) -> bytes:
        """NodeNames mode: prioritize's HostPriorityList for `names`, joined from memoised pieces."""
        memo = self._memos_for(request, note=True).scored
        return self._read_filled(memo, memo.reply, names, request, scored=True)

    def _read_filled(
        self,
        memo: FilterMemo | ScoreMemo,
        read: Callable[[Sequence[str]], _Reply | None],
        names: Sequence[str],
        request: PodRequest,
        *,
        scored: bool,
    ) -> _Reply:
        """`read(names)`, after judging the names the memo lacks (`read` gives None while any is missing)."""
        found = read(names)
        if found is None:
            for name in set(names) - memo.verdicts.keys():
                memo.record(name, self._judge_cached(name, request, scored))
            found = read(names)
            assert found is not None, "every name was just judged"
        return found

    def remembers_shape(self, request: PodRequest) -> bool:
        """Whether verdicts for this request shape are memoised (it is among the recent shapes)."""
        return request.shape in self._memos

    def _memos_for(self, request: PodRequest, *, note: bool) -> ShapeMemos:
        # The warmer asks with note=False: its work must not reorder the recent shapes.
        if note:
            self._note_shape(request)
        self.expire_remembered()
        memos = self._memos.get(request.shape)
        if memos is None:
            memos = self._memos[request.shape] = ShapeMemos()
        return memos

    def _note_shape(self, request: PodRequest) -> None:
        shape = request.shape
        if shape in self._recent:
            self._recent[shape] = self._recent.pop(shape)
            return
        self._recent[shape] = request
        if len(self._recent) > _RECENT_SHAPES:
            oldest = next(iter(self._recent))
            del self._recent[oldest]
            self._memos.pop(oldest, None)
        # A new shape: have the warmer fill it in for every node, so the next pod like this one is fast.
        self._dirty.update(self._nodes)
        self._wake.set()

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Marks a request being answered. The warmer yields to requests, never the reverse: it starts no
        slice while one is in flight, even while that request awaits its body or the client."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def warm_forever(self, slice_seconds: float = 0.0005) -> None:
        """Recompute the verdicts of recent shapes on nodes that changed, between requests, in slices short
        enough that a request arriving mid-slice waits at most `slice_seconds`."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                await self._idle.wait()
                self._warm_slice(slice_seconds)
                await asyncio.sleep(0)

    def _warm_slice(self, budget: float) -> None:
        deadline = time.perf_counter() + budget
        shapes = list(self._recent.values())
        while self._dirty:
            name = self._dirty.pop()
            if name not in self._nodes:
                continue
            for request in shapes:
                # Filter asks about every node; prioritize only about those that pass.
                if self.verdict(name, request, scored=False).fits:
                    self.verdict(name, request, scored=True)
                if time.perf_counter() > deadline:
                    self._dirty.add(name)  # its other shapes next slice; the ones done are memoised
                    return

    def verdict(self, name: str, request: PodRequest, *, scored: bool = True) -> Verdict:
        """NodeNames mode: the verdict from the cached node state (unscored is cheaper, for filter)."""
        memos = self._memos_for(request, note=False)
        memo = memos.scored if scored else memos.unscored
        found = memo.verdicts.get(name)
        if found is None:
            found = self._judge_cached(name, request, scored)
            memo.record(name, found)
        return found

    def _judge_cached(self, name: str, request: PodRequest, scored: bool) -> Verdict:
        entry = self._nodes.get(name)
        if entry is None:
            return unknown("node is not in the extender's node cache (not watched yet, or deleted)")
        return self._judge(name, entry.state, entry.problem, request, scored)

    def verdict_for(self, node: NodeInfo, request: PodRequest, *, scored: bool = True) -> Verdict:
        """Nodes mode: the verdict from the annotations in the request (plus pods the cache knows are bound).
        Called once per node: the caller expires remembered bindings once per request (`expire_remembered`)."""
        key = state_key(node.annotations)
        memo_key = (key, self._pods_version.get(node.name, 0), request.shape, scored)
        found = self._request_memo.get(memo_key)
        if found is None:
            state, problem = self._decode(key, node.annotations)
            found = self._judge(node.name, state, problem, request, scored)
            if len(self._request_memo) >= _MEMO_LIMIT:
                self._request_memo.clear()
            self._request_memo[memo_key] = found
        return found

    def pending_on(self, node: str) -> tuple[PendingPod, ...]:
        """Every pod bound to the node as far as this replica knows (watch + its own recent bindings)."""
        return self.with_remembered(node, self._pods_on.get(node, {}))

    def node_state(self, name: str) -> tuple[NodeState | None, str]:
        """The node's decoded state from the watch, or None and why there is none."""
        entry = self._nodes.get(name)
        if entry is None:
            return None, "node is not in the extender's node cache (not watched yet, or deleted)"
        return entry.state, entry.problem

    def judge_for_bind(self, name: str, state: NodeState, pod: PodInfo) -> Verdict:
        """The pod's verdict on the node from the watch-fed view plus this replica's claims, the pod's own claim
        left out (a retried bind must not count itself). Unmemoised, with the node's specifics in `detail`:
        its cost is the node's unpublished pods, never the cluster's."""
        self.expire_remembered()
        pending = [p for p in self.pending_on(name) if p.key != pod.key]
        return judge_node(state, pending, pod.request, scored=False)

    def with_remembered(self, node: str, known: Mapping[str, PendingPod]) -> tuple[PendingPod, ...]:
        """The `known` claims on the node (pod key -> claim), then this replica's bindings to it that `known`
        does not hold yet."""
        return (*known.values(), *(p for p in self.remembered_on(node) if p.key not in known))

    # ---- internals -------------------------------------------------------------------------------------

    def _judge(self, name: str, state: NodeState | None, problem: str, request: PodRequest, scored: bool) -> Verdict:
        if state is None:
            return unknown(problem)
        if not state.serving:
            return not_serving(state.not_serving_reason)
        return judge_node(state, self.pending_on(name), request, scored=scored)

    def _decode(self, key: StateKey, annotations: Mapping[str, str]) -> tuple[NodeState | None, str]:
        """The state `annotations` describe, memoised by `key` (`state_key` of them): two states that differ
        only in `observed-at` share one decoded state, whose `observed_at` is the first one seen."""
        decoded = self._decoded.get(key)
        if decoded is None:
            if not key:
                decoded = "no neuron-contig.io/ annotations (is the device plugin running on it?)"
            else:
                try:
                    decoded = decode_node_state(annotations)
                except NodeStateError as err:
                    decoded = f"node state annotations: {err}"
            if len(self._decoded) >= _MEMO_LIMIT:
                self._decoded.clear()
            self._decoded[key] = decoded
        return (None, decoded) if isinstance(decoded, str) else (decoded, "")

    def _unlink(self, key: str, node: str) -> None:
        on_node = self._pods_on.get(node)
        if on_node is not None and on_node.pop(key, None) is not None:
            if not on_node:
                del self._pods_on[node]
            self._bump_pods(node)

    def _bump_pods(self, node: str) -> None:
        self._pods_version[node] = self._pods_version.get(node, 0) + 1
        self._changed(node)

    def _changed(self, node: str) -> None:
        """The node's state or pods changed: forget its verdicts, and have the warmer recompute them."""
        for memos in self._memos.values():
            memos.forget(node)
        if self._recent:
            self._dirty.add(node)
            self._wake.set()

    def expire_remembered(self) -> None:
        if not self._expiring:
            return
        deadline = self._clock() - self._binding_ttl
        while self._expiring:
            key, at = next(iter(self._expiring.items()))
            if at >= deadline:
                return
            claim = self._claims[key]
            log.warning(
                "cache.binding_forgotten", pod=key, node=claim.node, state=claim.state,
                rule="the pod watch did not show this binding within the ttl",
            )  # fmt: skip
            self._drop_claim(key)
