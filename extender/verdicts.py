"""What the verbs conclude from the store (`extender.cache.ClusterStore`): verdicts, their memo and its warmer.

A verdict depends only on (node state, pods counted against it, request shape), so verdicts are memoised per
request shape, per node (`extender.answers`), and a node's entries are dropped the moment the store says its state
or its pods changed (`ClusterStore.subscribe`); the free sets its pending pods leave are kept per node too, so a
change is predicted once, not once per shape. The memo is bounded by entries (`_MEMO_ENTRIES`), not by a count of
shapes: a cluster with N nodes keeps about `_MEMO_ENTRIES / 2N` shapes warm (100 at 5,000 nodes). Past that, the
shape evicted is the least used, the newest of those on a tie, so a workload that cycles through more shapes than
fit keeps most of them warm instead of evicting each just before it returns. A reply at 5,000 nodes is built by
C-level passes over the memo. A warmer recomputes what changed, and fills a new shape for every node, in slices
between the requests that read the memo (filter, prioritize): a bind waiting on the API server does not hold it
back.

Every lookup first lets the store expire this replica's claims that outlived their ttl
(`ClusterStore.expire_remembered`), so no caller can judge with a stale claim by forgetting to.

All methods run on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from extender.answers import FilterAnswer, FilterMemo, ScoreMemo, example_of
from extender.cache import ClusterStore, StateKey, state_key
from extender.fit import FreeStates, Verdict, judge_node, judge_node_states, node_free_states, not_serving, unknown
from extender.wire import ExtenderArgs, NodeInfo, PodInfo, encode_priorities
from neuronalloc import NodeState
from neuronalloc.requests import PodRequest, RequestShape

__all__ = ["Verdicts"]

_Reply = TypeVar("_Reply")
_Memo = TypeVar("_Memo", FilterMemo, ScoreMemo)
_MEMO_LIMIT = 50_000  # request-mode memo entries before the memo is cleared (bounded memory, never wrong)
# Node x shape verdicts memoised in NodeNames mode, filter's and prioritize's together: one dict slot each
# (outcomes are interned), about 64 MB at most. Shapes kept: this over twice the node count, within these bounds.
_MEMO_ENTRIES = 1_000_000
_MIN_SHAPES = 16
_MAX_SHAPES = 512
_AGING = 4  # every _AGING x (shapes kept) requests, every shape's use count is halved
_MISSING: Any = object()


@dataclass(slots=True)
class _ShapeMemos:
    """Both memos of one request shape (filter asks unscored, cheaper; prioritize scored), and how it is used."""

    request: PodRequest  # a request of this shape, to judge it with
    admitted: int  # the request count when it was admitted
    uses: int = 1
    unscored: FilterMemo = field(default_factory=FilterMemo)
    scored: ScoreMemo = field(default_factory=ScoreMemo)

    def forget(self, name: str) -> None:
        self.unscored.outcomes.pop(name, None)
        self.scored.outcomes.pop(name, None)

    @property
    def entries(self) -> int:
        return len(self.unscored.outcomes) + len(self.scored.outcomes)


class Verdicts:
    """Verdicts on the store's nodes, memoised per request shape and kept warm (see the module docstring)."""

    def __init__(self, store: ClusterStore) -> None:
        self.store = store
        self._request_memo: dict[tuple[StateKey, int, RequestShape, bool], Verdict] = {}
        # Per node: the free sets its pending pods leave (`extender.fit.node_free_states`), until it changes.
        self._free: dict[str, FreeStates] = {}
        # Per request shape, its verdicts by node (most recently admitted last); a node's are dropped from every
        # shape in one place (`_changed`).
        self._memos: dict[RequestShape, _ShapeMemos] = {}
        self._requests = 0  # filter and prioritize requests answered from the memo, for use counts and aging
        # The warmer's work: nodes whose verdicts changed (every shape), shapes new to the memo (every node).
        self._dirty: dict[str, None] = {}
        self._cold: dict[RequestShape, Iterator[str]] = {}
        self._wake = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.judged_in_requests = 0  # verdicts computed while answering a request, not by the warmer
        store.subscribe(self._changed)

    @property
    def warm_backlog(self) -> int:
        """Nodes whose verdicts are still to be recomputed, plus shapes still to be filled for every node."""
        return len(self._dirty) + len(self._cold)

    @property
    def memo_entries(self) -> int:
        """Node x shape verdicts memoised (filter's and prioritize's)."""
        return sum(memos.entries for memos in self._memos.values())

    @property
    def shapes_kept(self) -> int:
        """How many request shapes the memo keeps at this cluster size (see `_MEMO_ENTRIES`)."""
        return max(_MIN_SHAPES, min(_MAX_SHAPES, _MEMO_ENTRIES // (2 * max(1, self.store.size))))

    def filter_answer(self, args: ExtenderArgs, *, brief: bool = False) -> FilterAnswer:
        """Filter's answer in the request's mode: from the memo for NodeNames, node by node for Nodes (the
        scheduler sends Nodes when the extender is not nodeCacheCapable, as with --standalone). `brief`: in
        NodeNames mode, when a node passes, the failed ones are counted but not listed (`FilterMemo.brief`)."""
        request = args.pod.request
        if args.node_names is not None:
            return self.filter_names(args.node_names, request, brief=brief)
        nodes = args.nodes or ()
        self.store.expire_remembered()
        return FilterAnswer.of((n.name for n in nodes), (self._verdict_for(n, request, False) for n in nodes))

    def best_of(self, args: ExtenderArgs, passed: Sequence[str], limit: int) -> list[str]:
        """Of the nodes that passed filter, up to `limit` with the best score (prioritize's), the request's order
        breaking ties: what /filter-best passes (see docs/extender.md)."""
        request = args.pod.request
        if not passed:
            return []
        if args.node_names is not None:
            memo = self._memos_for(request, note=False).scored
            return self._read_filled(memo, lambda m, names: m.best(names, limit), passed, request, scored=True)
        by_name = {n.name: n for n in args.nodes or ()}
        scores = [self._verdict_for(by_name[name], request, True).score for name in passed]
        top = max(scores)
        return [name for name, score in zip(passed, scores, strict=True) if score == top][:limit]

    def priority_reply(self, args: ExtenderArgs) -> bytes:
        """Prioritize's HostPriorityList in the request's mode."""
        request = args.pod.request
        if args.node_names is not None:
            return self.priority_names(args.node_names, request)
        nodes = args.nodes or ()
        self.store.expire_remembered()
        return encode_priorities((n.name, self._verdict_for(n, request, True).score) for n in nodes)

    def filter_names(self, names: Sequence[str], request: PodRequest, *, brief: bool = False) -> FilterAnswer:
        """NodeNames mode: filter's answer for `names`, from the memo; only nodes not judged yet cost Python."""
        memo = self._memos_for(request, note=True).unscored
        read = FilterMemo.brief if brief else FilterMemo.answer
        answer = self._read_filled(memo, read, names, request, scored=False)
        if not answer.passed and answer.example:
            # The memo keeps no node's specifics: the one node the log shows is judged again, with them.
            name = answer.example.split(": ", 1)[0]
            answer = dataclasses.replace(answer, example=example_of(name, self._judge_cached(name, request, False)))
        return answer

    def priority_names(self, names: Sequence[str], request: PodRequest) -> bytes:
        """NodeNames mode: prioritize's HostPriorityList for `names`, from the memo."""
        memo = self._memos_for(request, note=True).scored
        return self._read_filled(memo, ScoreMemo.reply, names, request, scored=True)

    def _read_filled(
        self,
        memo: _Memo,
        read: Callable[[_Memo, Sequence[str]], _Reply | None],
        names: Sequence[str],
        request: PodRequest,
        *,
        scored: bool,
    ) -> _Reply:
        """`read(memo, names)`, after judging the names the memo lacks (`read` gives None while any is missing). Names
        the view has no node for are judged for this request only: a request naming made-up nodes must not grow
        the memo."""
        found = read(memo, names)
        if found is not None:
            return found
        missing = set(names) - memo.outcomes.keys()
        self.judged_in_requests += len(missing)
        ghosts = missing - self.store.names()
        for name in missing - ghosts:
            memo.record(name, self._judge_cached(name, request, scored))
        if ghosts:
            kept = memo
            memo = type(kept)()
            memo.outcomes = {**kept.outcomes}
            for name in ghosts:
                memo.record(name, self._judge_cached(name, request, scored))
        found = read(memo, names)
        assert found is not None, "every name was just judged"
        return found

    def remembers_shape(self, request: PodRequest) -> bool:
        """Whether verdicts for this request shape are memoised."""
        return request.shape in self._memos

    def _memos_for(self, request: PodRequest, *, note: bool) -> _ShapeMemos:
        # The warmer asks with note=False: its work must not count as use of a shape.
        self.store.expire_remembered()
        memos = self._memos.get(request.shape)
        if note:
            self._requests += 1
            if self._requests % (_AGING * self.shapes_kept) == 0:
                for kept in self._memos.values():
                    kept.uses //= 2
        if memos is None:
            memos = self._admit_shape(request)
        elif note:
            memos.uses += 1
        return memos

    def _admit_shape(self, request: PodRequest) -> _ShapeMemos:
        """A shape new to the memo: room is made (see the module docstring), and the warmer fills it in for
        every node, so the next pod like this one finds it warm."""
        room = self.shapes_kept
        while len(self._memos) >= room:
            victim = min(self._memos, key=lambda shape: (self._memos[shape].uses, -self._memos[shape].admitted))
            del self._memos[victim]
            self._cold.pop(victim, None)
        memos = self._memos[request.shape] = _ShapeMemos(request, self._requests)
        self._cold[request.shape] = iter(list(self.store.names()))
        self._wake.set()
        return memos

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Marks a request that reads the memo (filter, prioritize) being answered: the warmer starts no slice
        while one is, and yields to it between slices. Binds are not marked: a bind waits on the API server for
        milliseconds, and the warmer's slices fit in between."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def warm_forever(self, slice_seconds: float = 0.0005) -> None:
        """Recompute the verdicts of kept shapes on nodes that changed, and fill new shapes, in slices short
        enough that a request arriving mid-slice waits at most `slice_seconds`; between slices every callback
        that is ready (a request's bytes, a watch event) runs first."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty or self._cold:
                await self._idle.wait()
                self._warm_slice(slice_seconds)
                await asyncio.sleep(0)

    def _warm_slice(self, budget: float) -> None:
        deadline = time.perf_counter() + budget
        nodes = self.store.names()
        while self._dirty:
            name = next(iter(self._dirty))
            if name in nodes:
                for memos in list(self._memos.values()):
                    self._warm(name, memos)
                    if time.perf_counter() > deadline:
                        return  # the shapes done are memoised; the rest next slice
            del self._dirty[name]
        while self._cold:
            shape, names = next(iter(self._cold.items()))
            memos = self._memos[shape]
            for name in names:
                if name in nodes:
                    self._warm(name, memos)
                    if time.perf_counter() > deadline:
                        return
            del self._cold[shape]

    def _warm(self, name: str, memos: _ShapeMemos) -> None:
        # Filter asks about every node; prioritize only about those that pass.
        found = memos.unscored.outcomes.get(name)
        if found is None:
            verdict = self._judge_cached(name, memos.request, False)
            memos.unscored.record(name, verdict)
            fits = verdict.fits
        else:
            fits = found.passes
        if fits and name not in memos.scored.outcomes:
            memos.scored.record(name, self._judge_cached(name, memos.request, True))

    def verdict(self, name: str, request: PodRequest, *, scored: bool = True) -> Verdict:
        """NodeNames mode: the verdict from the cached node state (unscored is cheaper, for filter), as the memo
        keeps it (no blocks, no detail)."""
        memos = self._memos_for(request, note=False)
        memo = memos.scored if scored else memos.unscored
        found = memo.outcomes.get(name)
        if found is None:
            memo.record(name, self._judge_cached(name, request, scored))
            found = memo.outcomes[name]
        return found.verdict

    def _judge_cached(self, name: str, request: PodRequest, scored: bool) -> Verdict:
        state, problem = self.store.node_state(name)
        return self._judge(name, state, problem, request, scored)

    def verdict_for(self, node: NodeInfo, request: PodRequest, *, scored: bool = True) -> Verdict:
        """Nodes mode: the verdict from the annotations in the request (plus pods the store knows are bound)."""
        self.store.expire_remembered()
        return self._verdict_for(node, request, scored)

    def _verdict_for(self, node: NodeInfo, request: PodRequest, scored: bool) -> Verdict:
        key = state_key(node.annotations)
        memo_key = (key, self.store.pods_version(node.name), request.shape, scored)
        found = self._request_memo.get(memo_key)
        if found is None:
            state, problem = self.store.decode(key, node.annotations)
            if state is None:
                found = unknown(problem)
            elif not state.serving:
                found = not_serving(state.not_serving_reason)
            else:
                found = judge_node(state, self.store.pending_on(node.name), request, scored=scored)
            if len(self._request_memo) >= _MEMO_LIMIT:
                self._request_memo.clear()
            self._request_memo[memo_key] = found
        return found

    def judge_for_bind(self, name: str, state: NodeState, pod: PodInfo) -> Verdict:
        """The pod's verdict on the node from the watch-fed view plus this replica's claims, the pod's own claim
        left out (a retried bind must not count itself). Unmemoised, with the node's specifics in `detail`:
        its cost is the node's unpublished pods, never the cluster's."""
        self.store.expire_remembered()
        pending = self.store.pending_on(name)
        if all(p.key != pod.key for p in pending) and self.store.node_state(name)[0] is state:
            return judge_node_states(state, self._free_states(name, state), pod.request, scored=False)
        return judge_node(state, [p for p in pending if p.key != pod.key], pod.request, scored=False)

    def _judge(self, name: str, state: NodeState | None, problem: str, request: PodRequest, scored: bool) -> Verdict:
        if state is None:
            return unknown(problem)
        if not state.serving:
            return not_serving(state.not_serving_reason)
        return judge_node_states(state, self._free_states(name, state), request, scored=scored)

    def _free_states(self, name: str, state: NodeState) -> FreeStates:
        """The free sets the node may have once its pending pods are admitted, predicted once per change."""
        found = self._free.get(name, _MISSING)
        if found is _MISSING:
            found = self._free[name] = node_free_states(state, self.store.pending_on(name))
        return found  # type: ignore[no-any-return]

    def _changed(self, node: str) -> None:
        """The node's state or pods changed: forget its verdicts, and have the warmer recompute them."""
        self._free.pop(node, None)
        for memos in self._memos.values():
            memos.forget(node)
        if self._memos:
            self._dirty[node] = None
            self._wake.set()
