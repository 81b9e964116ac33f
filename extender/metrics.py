"""Every metric the extender exports, in one place (names as docs/CONTRACTS.md pins them).

Each app gets its own registry so tests can run several in one process. Label values are zero-initialised so
dashboards and alerts see a 0, not a gap, before the first event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from neuronalloc import Resource

__all__ = [
    "CONTENT_TYPE_LATEST",
    "HTTP_REJECT_REASONS",
    "REJECT_REASONS",
    "RESULTS",
    "VERBS",
    "ExtenderMetrics",
]

VERBS = ("filter", "prioritize", "bind")
# Every outcome of a bind this replica decides (extender.bind.BIND_REASONS, which must match).
BIND_REASONS = (
    "ok", "no_block", "unresolvable", "unknown_node", "not_serving", "not_ours", "no_neuron_request",
    "already_bound", "mismatch", "not_found", "api_error", "outcome_unknown", "deadline", "not_binder",
    "forward_error",
)  # fmt: skip
RESULTS = ("ok", "bad_request", "error")
REJECT_REASONS = ("no_block", "unresolvable", "unknown_node", "not_serving")
# Refused before any handler ran: the body cap, the in-flight memory budget, the connection cap, header / body
# timeouts, an oversized head, a failed TLS handshake, a failed accept.
HTTP_REJECT_REASONS = (
    "body_too_large", "memory", "connections", "header_timeout", "body_timeout", "head_too_large",
    "tls_handshake", "accept_error",
)  # fmt: skip
# Filter is a dict lookup per node; the fine buckets show where 5,000 nodes land, the coarse ones show bind.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Pods remembered as unschedulable; beyond this the oldest are forgotten (a gauge, not an audit log).
_UNSCHEDULABLE_LIMIT = 10_000


class ExtenderMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ns, sub = "neuron_contig", "extender"
        self.request_duration = Histogram(
            "request_duration_seconds", "Time to answer one extender request, by verb.",
            ["verb"], namespace=ns, subsystem=sub, buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            "requests", "Extender requests by verb and result (ok | bad_request | error).",
            ["verb", "result"], namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        self.nodes_rejected = Counter(
            "nodes_rejected", "Nodes filtered out, by reason (no_block | unresolvable | unknown_node | not_serving).",
            ["reason"], namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        self.cache_nodes = Gauge(
            "cache_nodes", "Nodes in the extender's watch cache.", namespace=ns, subsystem=sub,
            registry=self.registry,
        )  # fmt: skip
        self.cache_staleness = Gauge(
            "cache_staleness_seconds", "Seconds since the watch cache last heard from the API server.",
            namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        self.pods_unschedulable = Gauge(
            "pods_unschedulable", "Pods whose latest filter passed no node, by the resource they ask for.",
            ["resource"], namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        self.http_rejected_total = Counter(
            "http_rejected", "Requests and connections the HTTP layer refused or shed, by reason "
            f"({' | '.join(HTTP_REJECT_REASONS)}).",
            ["reason"], namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        self.connections = Gauge(
            "connections", "Open client connections, by port (main | metrics).",
            ["port"], namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        self.inflight_bytes = Gauge(
            "inflight_bytes", "Estimated memory request bodies in flight hold (raw and decoded), against "
            "--max-inflight-bytes.", namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        self.tls_reloads = Counter(
            "tls_reloads", "Certificate files re-read after a change, by result (ok | error).",
            ["result"], namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        for result in ("ok", "error"):
            self.tls_reloads.labels(result)
        self.binds = Counter(
            "binds", "Binds this replica decided, by outcome (" + " | ".join(BIND_REASONS) + ").",
            ["reason"], namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        self.binds_forwarded = Counter(
            "binds_forwarded", "Binds forwarded to the replica holding the binder lease, by result "
            "(ok | refused | error: the holder could not be asked).",
            ["result"], namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        self.binder_active = Gauge(
            "binder_active", "1 while this replica holds the binder lease (the one active binder), else 0.",
            namespace=ns, subsystem=sub, registry=self.registry,
        )  # fmt: skip
        for reason in BIND_REASONS:
            self.binds.labels(reason)
        for result in ("ok", "refused", "error"):
            self.binds_forwarded.labels(result)
        for reason in HTTP_REJECT_REASONS:
            self.http_rejected_total.labels(reason)
        for port in ("main", "metrics"):
            self.connections.labels(port)
        for verb in VERBS:
            self.request_duration.labels(verb)
            for result in RESULTS:
                self.requests.labels(verb, result)
        for reason in REJECT_REASONS:
            self.nodes_rejected.labels(reason)
        for resource in Resource:
            self.pods_unschedulable.labels(resource.short)
        self._unschedulable: dict[str, frozenset[str]] = {}

    def observe(self, verb: str, result: str, elapsed: float) -> None:
        self.request_duration.labels(verb).observe(elapsed)
        self.requests.labels(verb, result).inc()

    def rejected(self, reason: str, count: int = 1) -> None:
        if count:
            self.nodes_rejected.labels(reason).inc(count)

    def http_rejected(self, reason: str) -> None:
        self.http_rejected_total.labels(reason).inc()

    def bind_outcome(self, reason: str, forwarded: bool, ok: bool) -> None:
        if forwarded:
            self.binds_forwarded.labels("ok" if ok else "error" if reason == "forward_error" else "refused").inc()
        elif reason in BIND_REASONS:
            self.binds.labels(reason).inc()

    def lease_held(self, holding: bool) -> None:
        self.binder_active.set(1 if holding else 0)

    def tls_reloaded(self, result: str) -> None:
        self.tls_reloads.labels(result).inc()

    def watch_connections(self, port: str, count: Callable[[], float]) -> None:
        self.connections.labels(port).set_function(count)

    def watch_budget(self, held: Callable[[], float]) -> None:
        self.inflight_bytes.set_function(held)

    def watch_cache(self, size: Callable[[], float], staleness: Callable[[], float]) -> None:
        """Read the cache's size and staleness at scrape time."""
        self.cache_nodes.set_function(size)
        self.cache_staleness.set_function(staleness)

    def pod_schedulable(self, pod_key: str, resources: Iterable[str], schedulable: bool) -> None:
        """Track which pods the latest filter left with no node, to export a count per resource."""
        self._drop_unschedulable(pod_key)
        if schedulable:
            return
        if len(self._unschedulable) >= _UNSCHEDULABLE_LIMIT:
            self._drop_unschedulable(next(iter(self._unschedulable)))
        held = frozenset(resources)
        self._unschedulable[pod_key] = held
        for resource in held:
            self.pods_unschedulable.labels(resource).inc()

    def forget_pods(self, pod_keys: Iterable[str]) -> None:
        """Pods that are gone or bound: no longer waiting, whatever their latest filter said."""
        for key in pod_keys:
            self._drop_unschedulable(key)

    def keep_pending_only(self, pod_keys: Iterable[str]) -> None:
        """A full list of the pods still waiting: forget every other one (deleted while the watch was down)."""
        waiting = set(pod_keys)
        for key in [k for k in self._unschedulable if k not in waiting]:
            self._drop_unschedulable(key)

    def _drop_unschedulable(self, pod_key: str) -> None:
        for resource in self._unschedulable.pop(pod_key, ()):
            self.pods_unschedulable.labels(resource).dec()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
