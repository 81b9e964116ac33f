"""`Verdicts.filter_answer` / `priority_reply` take the scheduler's ExtenderArgs in either mode: NodeNames (from
the watch-fed store and its memo) and Nodes (from the annotations in the request). Given the same nodes and a
claim this replica holds, both modes give the same answer, and both drop a claim past its ttl by themselves."""

from __future__ import annotations

import orjson

from extender.cache import ClusterStore
from extender.verdicts import Verdicts
from extender.wire import parse_extender_args, parse_pod

from .builders import names_args, node_doc, node_state, nodes_args, pod_doc
from .test_cache import Clock

DOCS = [
    node_doc("roomy", node_state("inf2.48xlarge")),
    node_doc("full", node_state("inf2.48xlarge", used_devices=range(12))),
    node_doc("sick", node_state("inf2.48xlarge", used_devices=range(8), unhealthy=[9])),
    node_doc("claimed", node_state("inf1.6xlarge")),
    node_doc("garbled", annotations={"neuron-contig.io/devices": "twelve"}),
]
POD = pod_doc("p", neuron=4)


def verdicts_with_a_claim(clock: Clock) -> Verdicts:
    verdicts = Verdicts(ClusterStore(clock=clock, binding_ttl=60))
    verdicts.store.apply("nodes", "SYNC", tuple(DOCS))
    verdicts.store.apply("pods", "SYNC", ())
    verdicts.store.remember_binding(parse_pod(pod_doc("held", neuron=4)), "claimed")
    return verdicts


def both_modes(verdicts: Verdicts) -> list[tuple[list[str], bytes, bytes, bytes]]:
    names = [str(d["metadata"]["name"]) for d in DOCS]
    out = []
    for args in (parse_extender_args(names_args(POD, names)), parse_extender_args(nodes_args(POD, DOCS))):
        answer = verdicts.filter_answer(args)
        out.append((answer.passed, answer.failed_members, answer.unresolvable_members, verdicts.priority_reply(args)))
    return out


def test_both_modes_give_one_answer_and_expire_claims_themselves() -> None:
    clock = Clock()
    verdicts = verdicts_with_a_claim(clock)
    by_names, by_nodes = both_modes(verdicts)
    assert by_names == by_nodes
    assert by_names[0] == ["roomy"]
    failed = orjson.loads(b"{" + by_names[1] + b"}")
    assert set(failed) == {"full", "sick", "claimed", "garbled"}
    assert "NeuronDevicesHealthy" in failed["sick"]
    clock.now += 61  # the claim outlives its ttl: neither mode counts it any more, and no caller expired it
    for fresh in (verdicts, verdicts_with_a_claim(clock)):
        clock.now += 61
        by_names, by_nodes = both_modes(fresh)
        assert by_names == by_nodes
        assert by_names[0] == ["roomy", "claimed"]
