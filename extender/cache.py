"""The extender's view of the cluster: nodes and bound pods as the API server's watches report them.

Nothing here is the source of truth. Every entry is rebuilt from a list + watch of the API server, so any
replica, and any restart, converges to the same view. The one thing held only in memory is a claim for a
binding this replica is making or made that its pod watch has not shown yet (`hold`: the Binding POST is in
flight; `confirm`: it succeeded; `unresolved`: its outcome is unknown, a timeout). A claim counts against its
node exactly like a bound pod; it is dropped the moment the watch shows the pod, when the bind is known to have
failed (`release`), or after `binding_ttl` (never while in flight), and it only ever makes the view more
conservative.

Admission order (see `extender.fit`): every pod that holds a node's devices has a place in the order kubelet
admits that node's pods, the order they were bound. A claim takes the next place when it is held (binds to one
node are serialised by the binder's lock, so that is the order of its POSTs), and keeps it when the watch shows
the pod. A pod the watch shows bound that no claim named takes the next place as it arrives: one watch delivers
events in the order etcd committed them, the order kubelet's own watch sees. A full list carries no order: the
pods it shows that the view did not have are placed after every pod it had (they were bound while the watch
was not looking), among themselves by the PodScheduled time, and pods of one node it cannot tell apart share a
place (judged in every order).

What the verbs conclude from this store (verdicts, their memo and its warmer) is `extender.verdicts`: the store
tells it which node changed (`subscribe`), and it reads the store, never the other way round.

All methods run on the event loop thread; watch threads hand events over with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable, Iterable, KeysView, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from extender.fit import PendingPod
from extender.ratelog import Throttle
from extender.wire import PodInfo, WireError, object_key, parse_node, parse_pod
from neuronalloc import ANNOTATION_PREFIX, NodeState, NodeStateError, decode_node_state
from neuronalloc.nodestate import OBSERVED_AT
from neuronlog import get_logger

__all__ = ["BOUND", "IN_FLIGHT", "UNKNOWN", "ClusterStore", "StateKey", "holds_devices", "state_key"]

log = get_logger(__name__)

StateKey = tuple[tuple[str, str], ...]
_DECODED_LIMIT = 50_000  # decoded states kept before the memo is cleared (bounded memory, never wrong)
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
            _failed(kind, err)
            return None

    return guarded


def _failed(kind: str, err: Exception) -> None:
    suppressed = _throttle.admit(("failed", kind))
    if suppressed is not None:
        log.exception("cache.object_failed", kind=kind, error=repr(err)[:300], suppressed=suppressed)


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


def holds_devices(pod: PodInfo) -> bool:
    """Whether the pod counts against its node's devices (bound, asks for Neuron, not finished)."""
    return bool(pod.node_name) and pod.phase not in _TERMINAL_PHASES and not pod.request.empty


def _evidence(pod: PodInfo) -> str:
    """When the pod was bound, as well as a list tells: the PodScheduled time, else (a pod created with its node
    set, never bound) its creation time; "" if neither."""
    return pod.scheduled or pod.created


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


class ClusterStore:
    """Nodes and bound pods from the watches, and this replica's claims (see the module docstring)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, binding_ttl: float = 300.0) -> None:
        self._clock = clock
        self._binding_ttl = binding_ttl
        self._nodes: dict[str, _Node] = {}
        self._pod_node: dict[str, str] = {}  # pod key -> node name
        self._pods_on: dict[str, dict[str, PendingPod]] = {}  # node name -> pod key -> its claim on the node
        self._pods_version: dict[str, int] = {}  # node name -> bumps when its pod set changes
        self._claims: dict[str, _Claim] = {}  # pod key -> a binding of this replica the watch has not shown yet
        self._claims_on: dict[str, dict[str, _Claim]] = {}  # node -> pod key -> claim
        # Claims that can expire (not in flight), oldest first: expiry pops from the front.
        self._expiring: dict[str, float] = {}
        self._places = itertools.count(1)  # admission-order places (see the module docstring)
        self._lists: dict[str, int] = {}  # kind -> full lists applied so far
        self._listed = asyncio.Event()
        self._decoded: dict[StateKey, NodeState | str] = {}
        self._synced: set[str] = set()
        self._listeners: list[Callable[[str], None]] = []  # told the name of each node whose state or pods change
        self._last_contact = clock()

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
        state, problem = self.decode(key, node.annotations)
        self._nodes[node.name] = _Node(key, state, problem)
        self._changed(node.name)
        return node.name

    def delete_node(self, name: str) -> None:
        self.touch()
        if self._nodes.pop(name, None) is not None:
            self._changed(name)

    def replace_pods(self, docs: Iterable[Any]) -> None:
        """A full list of pods. The ones the view did not have as bound where the list shows them are placed in
        the admission order after every pod it had (see the module docstring)."""
        self.touch()
        pods = [pod for pod in map(self._parse_pod, docs) if pod is not None]
        places = self._places_of_new([pod for pod in pods if holds_devices(pod) and self._unplaced(pod)])
        seen = set()
        for pod in pods:
            seen.add(pod.key)
            _isolated("pods", lambda p: self._upsert_parsed(p, places.get(p.key)))(pod)
        for key in set(self._pod_node) - seen:
            self.delete_pod(key)
        self.mark_synced("pods")

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

    def _places_of_new(self, pods: list[PodInfo]) -> dict[str, int]:
        """Places for pods a list shows bound that the view did not know: per node, by the PodScheduled time
        (to the second), pods it cannot tell apart sharing one place; a node with a pod that has no evidence at
        all has every such pod in one place."""
        by_node: dict[str, list[PodInfo]] = {}
        for pod in pods:
            by_node.setdefault(pod.node_name, []).append(pod)
        places: dict[str, int] = {}
        for on_node in by_node.values():
            if not all(map(_evidence, on_node)):
                place = next(self._places)
                places.update((pod.key, place) for pod in on_node)
                continue
            on_node.sort(key=lambda pod: (_evidence(pod), pod.key))
            for _, tied in itertools.groupby(on_node, key=_evidence):
                place = next(self._places)
                places.update((pod.key, place) for pod in tied)
        return places

    def _unplaced(self, pod: PodInfo) -> bool:
        """Whether the pod needs a place: the view has it neither bound there nor as a claim there."""
        if pod.key in self._pods_on.get(pod.node_name, {}):
            return False
        claim = self._claims.get(pod.key)
        return claim is None or claim.node != pod.node_name

    def upsert_pod(self, doc: Any) -> str | None:
        pod = self._parse_pod(doc)
        return None if pod is None else self._upsert_parsed(pod)

    def _parse_pod(self, doc: Any) -> PodInfo | None:
        """The pod, or None when it is malformed (logged, skipped: one object never stops a list or a watch)."""
        self.touch()
        try:
            return parse_pod(doc)
        except WireError as err:
            _rejected("pods", err)
        except Exception as err:
            _failed("pods", err)
        return None

    def _upsert_parsed(self, pod: PodInfo, place: int | None = None) -> str:
        key, node = pod.key, pod.node_name
        claim = self._claims.get(key) if node else None
        if not holds_devices(pod):
            if claim is not None:
                self._drop_claim(key)
            self.delete_pod(key)
            return key
        old_node = self._pod_node.get(key)
        known = self._pods_on.get(node, {}).get(key) if old_node == node else None
        if known is not None and known.request == pod.request:
            if claim is not None:
                self._drop_claim(key)
            return key  # the same pod in the same place: nothing changed
        if claim is not None and claim.node == node and claim.pod.request == pod.request and old_node is None:
            # The watch shows this replica's own binding: the same claim, in the same place, now carried by the
            # watch. The node's pending pods are unchanged, and so are its verdicts.
            self._drop_claim(key, changed=False)
            self._pod_node[key] = node
            self._pods_on.setdefault(node, {})[key] = claim.pod
            return key
        if claim is not None:
            self._drop_claim(key)  # the watch carries it from here (on whichever node it shows)
        if old_node is not None:
            self._unlink(key, old_node)
        self._pod_node[key] = node
        self._pods_on.setdefault(node, {})[key] = PendingPod(key, next(self._places) if place is None else place,
                                                             pod.request)  # fmt: skip
        self._bump_pods(node)
        return key

    def delete_pod(self, key: str) -> None:
        self.touch()
        if key in self._claims and self._claims[key].state != IN_FLIGHT:
            self._drop_claim(key)
        node = self._pod_node.pop(key, None)
        if node is not None:
            self._unlink(key, node)

    # ---- this replica's bindings (see the module docstring) --------------------------------------------

    def hold(self, pod: PodInfo, node: str) -> None:
        """A Binding POST for `pod` to `node` is about to be sent: count it against the node from now on, in the
        next place of the admission order."""
        self._set_claim(pod.key, _Claim(node, PendingPod(pod.key, next(self._places), pod.request), IN_FLIGHT, 0.0))

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
        """This replica's claims on `node` the watch has not shown yet. Pure read: expiry happens where judging
        starts (`extender.verdicts` calls `expire_remembered` first), so a verdict never changes half-way."""
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

    def _drop_claim(self, key: str, *, changed: bool = True) -> None:
        claim = self._claims.pop(key)
        self._expiring.pop(key, None)
        on_node = self._claims_on[claim.node]
        del on_node[key]
        if not on_node:
            del self._claims_on[claim.node]
        if changed:
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

    def names(self) -> KeysView[str]:
        """The nodes the watch has (a live view)."""
        return self._nodes.keys()

    def pods_version(self, node: str) -> int:
        """A number that changes whenever the pods counted against `node` change (watch or claims)."""
        return self._pods_version.get(node, 0)

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call `listener(node)` whenever the node's state or the pods counted against it change."""
        self._listeners.append(listener)

    def staleness_seconds(self) -> float:
        """Seconds since the API server was last heard from."""
        return max(0.0, self._clock() - self._last_contact)

    def pending_on(self, node: str) -> tuple[PendingPod, ...]:
        """Every pod bound to the node as far as this replica knows (watch + its own recent bindings)."""
        return self.with_remembered(node, self._pods_on.get(node, {}))

    def node_state(self, name: str) -> tuple[NodeState | None, str]:
        """The node's decoded state from the watch, or None and why there is none."""
        entry = self._nodes.get(name)
        if entry is None:
            return None, "node is not in the extender's node cache (not watched yet, or deleted)"
        return entry.state, entry.problem

    def with_remembered(self, node: str, known: Mapping[str, PendingPod]) -> tuple[PendingPod, ...]:
        """The `known` claims on the node (pod key -> claim), then this replica's bindings to it that `known`
        does not hold yet."""
        return (*known.values(), *(p for p in self.remembered_on(node) if p.key not in known))

    # ---- internals -------------------------------------------------------------------------------------

    def decode(self, key: StateKey, annotations: Mapping[str, str]) -> tuple[NodeState | None, str]:
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
            if len(self._decoded) >= _DECODED_LIMIT:
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
        """The node's state or pods changed: whoever memoises verdicts forgets the node's."""
        for listener in self._listeners:
            listener(node)

    def expire_remembered(self) -> None:
        """Drop claims the pod watch has not confirmed within `binding_ttl` (never one in flight)."""
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
