"""Does a pod fit a node, and how well: a pure function of the node's published state and the pods bound to it.

The node's annotations say what was free when the plugin last read kubelet; pods bound since then are not in
that state yet. Their blocks are predicted with the very allocator the plugin will run (`neuronalloc.allocate`),
in the order kubelet admits them, and taken out of the free sets. Then the pod is placed container by container,
again with the plugin's allocator, exactly as kubelet will ask for it.

Admission order: kubelet's pod source hands it each binding to its node as it happens, one pod per ADD, and the
device manager allocates at admission, so pods are admitted in the order they were bound (a batch of several,
as at kubelet's start, is admitted oldest first, but bindings arrive one by one). Each pending pod carries its
place in that order (`PendingPod.order`, assigned by `extender.cache`); pods with the same place are pods whose
order is not known (a full list, where the evidence is the PodScheduled time to the second), and a pod fits only
if it fits whatever order they are admitted in (`free_after`): up to `MAX_ORDERS` orders, above which the node
is refused until its plugin publishes them.

Verdicts:
- fit: every block found; score 0..10 from `neuronalloc.fit_score` (size-weighted over the pod's blocks),
  taken with `block_fit_score` on the blocks already placed.
- unresolvable: the pod could not be placed even on this node with every device free (a trn device count
  outside 1/4/8/16, or more than the node has). Preemption cannot help: FailedAndUnresolvableNodes.
- no_block: the node is only too full or too fragmented now (or holds too many pods bound in an unknown order):
  FailedNodes.
- unknown: the node's state annotations are missing or garbled: FailedNodes, with the reason.
- not_serving: the node's plugin says it cannot serve kubelet now (restarting, kubelet restarted, stopping): a
  pod bound there would fail admission. FailedNodes, with the plugin's reason.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from neuronalloc import (
    Free,
    NodeState,
    Refusal,
    Resource,
    Topology,
    allocate,
    block_fit_score,
    encode_ranges,
    free_blocks,
    is_aligned,
)
from neuronalloc.requests import PodRequest, RequestShape, Step

UNHEALTHY_NOTE = "some devices unhealthy: see the node condition NeuronDevicesHealthy"

__all__ = [
    "FITS",
    "MAX_ORDERS",
    "FreeStates",
    "PendingPod",
    "Verdict",
    "VerdictKind",
    "free_after",
    "judge",
    "judge_node",
    "judge_node_states",
    "judge_states",
    "node_free_states",
    "not_serving",
    "unknown",
]

VerdictKind = Literal["fit", "no_block", "unresolvable", "unknown", "not_serving"]


@dataclass(frozen=True, slots=True)
class PendingPod:
    """A pod bound to the node whose block the node's published state does not include yet."""

    key: str  # "namespace/name"
    order: int  # its place in the order kubelet admits the node's pods (bind order); equal places: not known
    request: PodRequest


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    score: int  # 0..10; 0 unless kind == "fit"
    # "" when it fits. Else words that do not name this node's IDs, so that kube-scheduler's event groups
    # identical reasons ("0/5000 nodes are available: 4000 neuron-contig: no free contiguous block...");
    # the rule words name the instance type, so the count is per type, never per node.
    reason: str
    blocks: tuple[tuple[Resource, tuple[int, ...]], ...] = ()  # the predicted blocks, in placement order
    detail: str = ""  # this node's specifics (the free IDs, the rule), for logs and bind errors

    @property
    def fits(self) -> bool:
        return self.kind == "fit"


# The one unscored "fits" verdict: filter tells passing nodes apart by identity, at C speed, at 5,000 nodes.
FITS = Verdict("fit", 0, "")


def unknown(reason: str) -> Verdict:
    return Verdict("unknown", 0, f"(unknown) {reason}")


def not_serving(reason: str) -> Verdict:
    return Verdict("not_serving", 0, f"(not serving) {reason}")


@dataclass(frozen=True, slots=True)
class _Placed:
    free_after: Free
    steps: tuple[tuple[Step, tuple[int, ...], Free], ...]  # (step, its block, the free sets it was chosen from)


@dataclass(frozen=True, slots=True)
class _Failed:
    index: int  # the step that found no block
    refusal: Refusal


_RESOURCES = {r.value: r for r in Resource}


def _place(topo: Topology, free: Free, shape: RequestShape) -> _Placed | _Failed:
    """Place each step in order with the plugin's allocator; a kept block leaves the free sets."""
    placed: list[tuple[Step, tuple[int, ...], Free]] = []
    for index, step in enumerate(shape):
        name, size, keeps = step
        resource = _RESOURCES[name]
        chosen = allocate(topo, resource, free.of(resource), size)
        if isinstance(chosen, Refusal):
            return _Failed(index, chosen)
        placed.append((step, chosen, free))
        if keeps:
            free = free.take(topo, resource, chosen)
    return _Placed(free, tuple(placed))


@dataclass(frozen=True, slots=True)
class _ShapeVerdict:
    """A verdict before it is worded for one pod (its container names)."""

    kind: VerdictKind
    score: int
    failed: _Failed | None  # the step that failed and why; None when it fits
    blocks: tuple[tuple[Resource, tuple[int, ...]], ...]
    whole_pod: str = ""  # set when the blocks fit one by one but not together on any free state


@lru_cache(maxsize=4096)
def _unresolvable(topo: Topology, shape: RequestShape) -> _ShapeVerdict | None:
    """Why the shape could never be placed on this topology, even with everything free and healthy."""
    impossible = _place(topo, Free.everything(topo), shape)
    if not isinstance(impossible, _Failed):
        return None
    units = {name for name, _, _ in shape}
    if impossible.refusal.kind != "unresolvable" and len(units) == 1:
        # Each block alone is allowed, but together they exceed the node: say so in those words.
        unit = _RESOURCES[next(iter(units))]
        total = sum(size for _, size, keeps in shape if keeps)
        message = (
            f"pod needs {total} {unit.short} in all but the node has {topo.unit_count(unit)} "
            f"({topo.instance_type}): {impossible.refusal.rule}"
        )
        return _ShapeVerdict("unresolvable", 0, impossible, (), message)
    return _ShapeVerdict("unresolvable", 0, impossible, ())


# Both are pure functions of hashable values, so one memo serves every node in the same state: in a real
# cluster many nodes are identical (empty, full), and each distinct state is judged once per request shape.


@lru_cache(maxsize=100_000)
def _check_shape(topo: Topology, free: Free, shape: RequestShape) -> _ShapeVerdict:
    """Fit or not, unscored. A single block fits exactly when the rule has a block inside the free set (the
    allocator chooses among those very blocks), which is far cheaper than ranking them; several blocks are
    placed one by one with the allocator, since each choice changes what the next one finds."""
    impossible = _unresolvable(topo, shape)
    if impossible is not None:
        return impossible
    if len(shape) == 1:
        name, size, _ = shape[0]
        resource = _RESOURCES[name]
        if next(free_blocks(topo, resource, free.of(resource), size), None) is not None:
            return _ShapeVerdict("fit", 0, None, ())
        refusal = allocate(topo, resource, free.of(resource), size)  # no candidate: returns at once
        assert isinstance(refusal, Refusal), "a free block exists after all"
        return _ShapeVerdict("no_block", 0, _Failed(0, refusal), ())
    result = _place(topo, free, shape)
    if isinstance(result, _Failed):
        return _ShapeVerdict("no_block", 0, result, ())
    return _ShapeVerdict("fit", 0, None, ())


@lru_cache(maxsize=100_000)
def _score_shape(topo: Topology, free: Free, shape: RequestShape) -> _ShapeVerdict:
    """The full verdict: the allocator's blocks and the size-weighted `fit_score` of each. The placement itself
    tells fit from no fit (a failed step is what `_check_shape` reports too), so it runs once."""
    impossible = _unresolvable(topo, shape)
    if impossible is not None:
        return impossible
    result = _place(topo, free, shape)
    if isinstance(result, _Failed):
        return _ShapeVerdict("no_block", 0, result, ())
    weighted = weight = 0
    for (name, size, _), block, before in result.steps:
        resource = _RESOURCES[name]
        # The block `_place` chose is the one `fit_score` would choose again: score it, do not re-choose.
        weighted += size * block_fit_score(topo, resource, before.of(resource), block)
        weight += size
    score = min(10, max(1, round(weighted / weight)))
    return _ShapeVerdict("fit", score, None, tuple((_RESOURCES[s[0]], block) for s, block, _ in result.steps))


def judge(topo: Topology, free: Free, request: PodRequest, *, scored: bool = True) -> Verdict:
    """The verdict for `request` on a node with topology `topo` and free sets `free`.

    scored=False (filter) skips the score and the predicted blocks: fit or not is the same either way."""
    if not request.shape:
        return FITS
    found = (_score_shape if scored else _check_shape)(topo, free, request.shape)
    if found.failed is None:
        return Verdict(found.kind, found.score, "", found.blocks) if scored else FITS
    if found.whole_pod:
        return Verdict(found.kind, 0, found.whole_pod)
    need = request.needs[found.failed.index]
    refusal = found.failed.refusal
    # Verdicts are memoised by request shape, which holds sizes, not container names: the reason may only
    # name what the shape fixes, so a multi-block pod's block is named by its position.
    count = len(request.needs)
    which = f"block {found.failed.index + 1} of {count}: " if count > 1 else ""
    if found.kind == "unresolvable":  # depends on the instance type and the size only: already generic
        return Verdict(found.kind, 0, f"{which}{refusal}")
    # Short and free of the instance type, on purpose: FailedNodes carries one reason per failing node (the
    # largest part of filter's reply at 5,000 nodes), and kube-scheduler's event counts nodes per distinct
    # reason, so one wording per shape and rule gives one line. The rule and this node's free IDs are in `detail`.
    block = f" for {which.rstrip(': ')}" if which else ""
    kind = "aligned" if is_aligned(topo, need.resource) else "contiguous"
    reason = f"no free {kind} block of {need.size} {need.resource.units}{block} now"
    return Verdict(found.kind, 0, reason, detail=refusal.message)


# More orders than this among a node's bound-but-unpublished pods, and the node is refused until its plugin
# publishes them (4 pods bound in the same second, seen only in a list): judging it would cost too much, and a
# node that cannot be judged is refused, never guessed free.
MAX_ORDERS = 24
UNORDERED = (
    "pods bound to this node in an order the extender cannot tell (seen in one list, bound in the same second) "
    "are not published by its device plugin yet"
)

# The free sets a node may have once its pending pods are admitted: one per order they may be admitted in
# (deduplicated; the first is the order of the evidence), or None when there are more than MAX_ORDERS orders.
FreeStates = tuple[Free, ...] | None


@lru_cache(maxsize=65_536)
def _admit(topo: Topology, free: Free, kept: RequestShape) -> Free:
    """The free sets after kubelet admits a pod whose kept blocks are `kept`; a pod whose block cannot be
    predicted takes nothing (the node will refuse it at admission)."""
    result = _place(topo, free, kept)
    return free if isinstance(result, _Failed) else result.free_after


def free_after(topo: Topology, free: Free, pending: Iterable[PendingPod]) -> FreeStates:
    """The free sets after `pending` are admitted in their order (`PendingPod.order`, ties in every order)."""
    ranked = sorted(pending, key=lambda p: (p.order, p.key))
    if not ranked:
        return (free,)
    groups = [tuple(group) for _, group in itertools.groupby(ranked, key=lambda p: p.order)]
    if math.prod(math.factorial(len(group)) for group in groups) > MAX_ORDERS:
        return None
    states: dict[Free, None] = {free: None}
    for group in groups:
        reached: dict[Free, None] = {}
        for start in states:
            for order in itertools.permutations(group) if len(group) > 1 else (group,):
                after = start
                for pod in order:
                    after = _admit(topo, after, tuple(step for step in pod.request.shape if step[2]))
                reached[after] = None
        states = reached
    return tuple(states)


def node_free_states(state: NodeState, pending: Iterable[PendingPod]) -> FreeStates:
    """`free_after` from the node's published free sets, for the pending pods its state does not account for."""
    accounted = state.pods
    free = Free(frozenset(state.free_devices), frozenset(state.free_cores))
    return free_after(state.topology, free, [p for p in pending if p.key not in accounted])


def judge_states(topo: Topology, states: FreeStates, request: PodRequest, *, scored: bool = True) -> Verdict:
    """The verdict on a node that may have any of `states` free: it fits only if it fits in every one (the
    lowest score; the blocks of the first). None (too many orders to judge): refused."""
    if states is None:
        return Verdict("no_block", 0, UNORDERED) if request.shape else FITS
    if len(states) == 1:
        return judge(topo, states[0], request, scored=scored)
    verdicts = [judge(topo, free, request, scored=scored) for free in states]
    refused = next((v for v in verdicts if not v.fits), None)
    if refused is not None:
        return refused
    if not scored:
        return FITS
    return Verdict("fit", min(v.score for v in verdicts), "", verdicts[0].blocks)


def judge_node(state: NodeState, pending: Iterable[PendingPod], request: PodRequest, *, scored: bool = True) -> Verdict:
    """The verdict for `request` on a node whose published state is `state`, with `pending` bound to it."""
    return judge_node_states(state, node_free_states(state, pending), request, scored=scored)


def judge_node_states(state: NodeState, states: FreeStates, request: PodRequest, *, scored: bool = True) -> Verdict:
    """`judge_states` on the node's topology, naming failed hardware when nothing fits and some of it failed."""
    verdict = judge_states(state.topology, states, request, scored=scored)
    if verdict.kind != "no_block" or not state.unhealthy_devices:
        return verdict
    # Failed hardware is a different cause with a different owner (the node, not the workload): say so, and
    # where the plugin explains it. The reason stays free of IDs so the scheduler's event still groups it.
    return replace(
        verdict,
        reason=f"{verdict.reason} ({UNHEALTHY_NOTE})",
        detail=f"{verdict.detail}; unhealthy devices {encode_ranges(state.unhealthy_devices)}",
    )
