"""/filter-best: filter and prioritize in one round trip. It passes only the nodes that /filter passes with the
best score /prioritize gives, at most `--best-nodes` of them in the request's order; when one passes it lists no
failed node (kube-scheduler reads failures only when none passes), and when none does it answers as /filter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.cache import ClusterStore
from extender.metrics import ExtenderMetrics
from extender.server import Handlers, ServerSettings, build_app
from extender.verdicts import Verdicts

from .builders import names_args, node_doc, node_state, nodes_args, pod_doc
from .serving import Http, served

INSTANCE_TYPES = ("inf1.6xlarge", "inf1.24xlarge", "inf2.48xlarge", "trn1.32xlarge")


def handlers(nodes: list[dict[str, Any]], best_nodes: int = 8) -> Handlers:
    store = ClusterStore()
    store.apply("nodes", "SYNC", tuple(nodes))
    store.apply("pods", "SYNC", ())
    return Handlers(ServerSettings(best_nodes=best_nodes), Verdicts(store), None, ExtenderMetrics())


def call(verbs: Handlers, verb: str, args: dict[str, Any], **options: bool) -> Any:
    return orjson.loads(asyncio.run(getattr(verbs, verb)(orjson.dumps(args), **options)).body)


def passed_names(reply: dict[str, Any]) -> list[str]:
    if reply["NodeNames"] is not None:
        return list(reply["NodeNames"])
    return [n["metadata"]["name"] for n in reply["Nodes"]["items"]]


def expected_best(verbs: Handlers, args: dict[str, Any], limit: int) -> list[str]:
    """What /filter and /prioritize say together: the passing nodes with the top score, first ones first."""
    passed = passed_names(call(verbs, "filter", args))
    scores = {h["Host"]: h["Score"] for h in call(verbs, "prioritize", args)}
    top = max((scores[name] for name in passed), default=None)
    return [name for name in passed if scores[name] == top][:limit]


node_states = st.builds(
    lambda kind, used: (kind, used),
    st.sampled_from(INSTANCE_TYPES),
    st.sets(st.integers(0, 15), max_size=12),
)


@settings(max_examples=60, deadline=None)
@given(
    states=st.lists(node_states, min_size=1, max_size=12),
    devices=st.integers(1, 8),
    limit=st.integers(1, 5),
    nodes_mode=st.booleans(),
)
def test_best_is_filters_passing_nodes_with_prioritizes_top_score(
    states: list[tuple[str, set[int]]], devices: int, limit: int, nodes_mode: bool
) -> None:
    nodes = []
    for i, (kind, used) in enumerate(states):
        count = node_state(kind).topology.device_count
        nodes.append(node_doc(f"n{i}", node_state(kind, used_devices={d for d in used if d < count})))
    verbs = handlers(nodes, best_nodes=limit)
    pod = pod_doc("p", neuron=devices)
    args = nodes_args(pod, nodes) if nodes_mode else names_args(pod, [n["metadata"]["name"] for n in nodes])
    reply = call(verbs, "filter", args, best=True)
    assert passed_names(reply) == expected_best(verbs, args, limit)
    if passed_names(reply):
        assert reply["FailedNodes"] == {} and reply["FailedAndUnresolvableNodes"] == {}
    else:
        plain = call(verbs, "filter", args)
        assert reply["FailedNodes"] == plain["FailedNodes"]
        assert reply["FailedAndUnresolvableNodes"] == plain["FailedAndUnresolvableNodes"]


def test_ties_keep_the_schedulers_order_up_to_the_limit() -> None:
    nodes = [node_doc(f"n{i}", node_state("inf2.48xlarge")) for i in range(6)]
    verbs = handlers(nodes, best_nodes=4)
    order = ["n3", "n5", "n0", "n1", "n4", "n2"]
    reply = call(verbs, "filter", names_args(pod_doc("p", neuron=2), order), best=True)
    assert reply["NodeNames"] == ["n3", "n5", "n0", "n1"]


def test_a_better_fit_beats_an_empty_node() -> None:
    # Best fit: a 2-device pod belongs in the 2-device hole, keeping the empty node's large blocks whole.
    nodes = [
        node_doc("empty", node_state("inf1.24xlarge")),
        node_doc("hole", node_state("inf1.24xlarge", used_devices=set(range(16)) - {6, 7})),
    ]
    reply = call(handlers(nodes), "filter", names_args(pod_doc("p", neuron=2), ["empty", "hole"]), best=True)
    assert reply["NodeNames"] == ["hole"]


def test_none_passing_answers_with_every_failure_as_filter_does() -> None:
    nodes = [
        node_doc("full", node_state("inf1.6xlarge", used_devices=[0, 1, 2, 3])),
        node_doc("trn", node_state("trn1.32xlarge")),
    ]
    verbs = handlers(nodes)
    args = names_args(pod_doc("p", neuron=3), ["full", "trn"])
    reply = call(verbs, "filter", args, best=True)
    assert reply == call(verbs, "filter", args)
    assert set(reply["FailedNodes"]) == {"full"} and set(reply["FailedAndUnresolvableNodes"]) == {"trn"}


@pytest.fixture
def http() -> Iterator[tuple[Http, ExtenderMetrics]]:
    store = ClusterStore()
    nodes = (node_doc("a", node_state("inf2.48xlarge")), node_doc("b", node_state("inf1.6xlarge")))
    store.apply("nodes", "SYNC", nodes)
    store.apply("pods", "SYNC", ())
    metrics = ExtenderMetrics()
    with served(lambda: build_app(ServerSettings(best_nodes=1), Verdicts(store), None, metrics)) as (base, _):
        yield Http(base), metrics


def test_the_route_is_served_and_counted_as_filter(http: tuple[Http, ExtenderMetrics]) -> None:
    client, metrics = http
    status, out = client.post("/filter-best", names_args(pod_doc("p", neuron=1), ["a", "b"]))
    assert status == 200 and out["Error"] == "" and len(out["NodeNames"]) == 1
    requests = metrics.registry.get_sample_value(
        "neuron_contig_extender_requests_total", {"verb": "filter", "result": "ok"}
    )
    assert requests == 1
    status, out = client.post("/filter-best", {"Pod": 7})
    assert status == 400 and out["Error"]
