"""Filter verdicts against a brute-force oracle on random node states, for every instance type in the catalog."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.answers import FilterAnswer
from extender.cache import ClusterStore
from extender.fit import PendingPod, judge, judge_node
from extender.verdicts import Verdicts
from extender.wire import parse_node
from neuronalloc import CATALOG, Free, NodeState, PodHolding, Resource, Rule, check_block, encode_node_state
from neuronalloc.requests import ContainerSpec, PodRequest, pod_request

from .builders import NEURON, NEURONCORE, node_doc, node_state

TRN_SIZES = (1, 4, 8, 16)


def single(resource: Resource, size: int) -> PodRequest:
    return pod_request((ContainerSpec("c", {resource.value: str(size)}, {}),), ())


def oracle(state: NodeState, resource: Resource, size: int) -> str:
    """Enumerate every block the hardware rules allow (written from neuron-hardware.md, not from the product)."""
    topo = state.topology
    devices = resource in (Resource.NEURON, Resource.NEURONDEVICE)  # neurondevice: the alias of whole devices
    total = topo.device_count if devices else topo.core_count
    aligned = devices and topo.rule is Rule.ALIGNED
    if size > total or (aligned and size not in TRN_SIZES):
        return "unresolvable"
    free = state.free_devices if devices else state.free_cores
    starts = range(0, total - size + 1, size if aligned else 1)
    if any(all(i in free for i in range(s, s + size)) for s in starts):
        return "fit"
    return "no_block"


@dataclass(frozen=True)
class Case:
    state: NodeState
    resource: Resource
    size: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    name = draw(st.sampled_from(sorted(CATALOG)))
    row = CATALOG[name]
    used_devices, used_cores, sick = [], [], []
    for device in range(row.devices):
        kind = draw(st.sampled_from(["free", "free", "held", "sick", "partial"]))
        cores = range(device * row.cores_per_device, (device + 1) * row.cores_per_device)
        if kind == "held":
            used_devices.append(device)
        elif kind == "sick":
            sick.append(device)
        elif kind == "partial":
            used_cores.extend(draw(st.lists(st.sampled_from(list(cores)), min_size=1, unique=True)))
    state = node_state(name, used_devices=used_devices, used_cores=used_cores, unhealthy=sick)
    resource = draw(st.sampled_from(list(Resource)))
    total = row.devices if resource is not Resource.NEURONCORE else row.devices * row.cores_per_device
    size = draw(st.integers(1, total + 2))
    return Case(state, resource, size)


@settings(max_examples=400, deadline=None)
@given(cases())
def test_filter_matches_brute_force_oracle(case: Case) -> None:
    verdict = judge_node(case.state, [], single(case.resource, case.size))
    assert verdict.kind == oracle(case.state, case.resource, case.size), verdict.reason
    assert 0 <= verdict.score <= 10
    if verdict.fits:
        assert verdict.score >= 1
        ((resource, block),) = verdict.blocks
        free = case.state.free_devices if resource is not Resource.NEURONCORE else case.state.free_cores
        assert set(block) <= free and len(block) == case.size
        assert check_block(case.state.topology, resource, block) is None
    else:
        assert verdict.score == 0 and verdict.reason


@settings(max_examples=150, deadline=None)
@given(cases())
def test_verdict_is_the_same_through_the_annotations(case: Case) -> None:
    """The Nodes-mode path (annotations -> codec -> verdict) agrees with judging the state directly."""
    request = single(case.resource, case.size)
    node = parse_node(node_doc("n", case.state))
    assert Verdicts(ClusterStore()).verdict_for(node, request) == judge_node(case.state, [], request)


def test_unresolvable_states_the_rule_in_words() -> None:
    trn = node_state("trn1.32xlarge")
    verdict = judge_node(trn, [], single(Resource.NEURON, 3))
    assert verdict.kind == "unresolvable"
    assert "starting at a multiple of its size" in verdict.reason and "3 devices" in verdict.reason
    assert "container" not in verdict.reason, "verdicts are shared by every pod of the shape: no names"
    too_big = judge_node(node_state("inf1.6xlarge"), [], single(Resource.NEURON, 5))
    assert too_big.kind == "unresolvable" and "only 4" in too_big.reason


def test_too_full_reason_is_short_and_the_same_on_every_node_of_a_rule() -> None:
    # One wording per shape and rule: kube-scheduler's event then counts nodes on one line, and FailedNodes
    # (one reason per failing node) stays small. The node's own free IDs and rule go to `detail`.
    four = single(Resource.NEURON, 4)
    on_trn = judge_node(node_state("trn1.32xlarge", used_devices=[0, 4, 8, 12]), [], four)
    assert (on_trn.kind, on_trn.reason) == ("no_block", "no free aligned block of 4 devices now")
    assert "starting at a multiple of its size" in on_trn.detail and "[1-3,5-7,9-11,13-15]" in on_trn.detail
    on_inf1 = judge_node(node_state("inf1.24xlarge", used_devices=[3, 7, 11, 15]), [], four)
    on_inf2 = judge_node(node_state("inf2.48xlarge", used_devices=[2, 5, 8, 11]), [], four)
    assert on_inf1.reason == on_inf2.reason == "no free contiguous block of 4 devices now"
    cores = judge_node(node_state("inf2.48xlarge", used_devices=range(12)), [], single(Resource.NEURONCORE, 4))
    assert FilterAnswer.of(["t"], [on_trn]).example == f"t: {on_trn.detail}", "the log names the node's specifics"
    assert cores.reason == "no free contiguous block of 4 NeuronCores now"


def test_multi_container_pod_placed_container_by_container() -> None:
    two_by_two = pod_request((ContainerSpec("a", {NEURON: "2"}, {}), ContainerSpec("b", {NEURON: "2"}, {})), ())
    assert judge_node(node_state("inf1.6xlarge"), [], two_by_two).blocks == (
        (Resource.NEURON, (0, 1)),
        (Resource.NEURON, (2, 3)),
    )
    # 3 free devices are enough for the sum's count but not for the second block of 2 after the first.
    verdict = judge_node(node_state("inf1.6xlarge", used_devices=[2]), [], two_by_two)
    assert verdict.kind == "no_block" and "for block 2 of 2 " in verdict.reason
    # The memo is keyed by shape: a pod with other container names gets the same, still true, reason.
    renamed = pod_request((ContainerSpec("x", {NEURON: "2"}, {}), ContainerSpec("y", {NEURON: "2"}, {})), ())
    assert judge_node(node_state("inf1.6xlarge", used_devices=[2]), [], renamed).reason == verdict.reason
    # Together more than the node has: no free state could ever hold them.
    whole = pod_request((ContainerSpec("a", {NEURON: "16"}, {}), ContainerSpec("b", {NEURON: "1"}, {})), ())
    verdict = judge_node(node_state("trn1.32xlarge"), [], whole)
    assert verdict.kind == "unresolvable" and "17 neuron in all" in verdict.reason


def test_init_container_hands_its_block_back_but_a_sidecar_keeps_it() -> None:
    app = (ContainerSpec("app", {NEURON: "2"}, {}),)
    init = pod_request(app, (ContainerSpec("init", {NEURON: "4"}, {}),))
    assert judge_node(node_state("inf1.6xlarge"), [], init).fits
    sidecar = pod_request(app, (ContainerSpec("side", {NEURON: "4"}, {}, sidecar=True),))
    assert judge_node(node_state("inf1.6xlarge"), [], sidecar).kind == "unresolvable"


def test_devices_and_cores_share_hardware() -> None:
    mixed = pod_request((ContainerSpec("a", {NEURON: "1", NEURONCORE: "4"}, {}),), ())
    verdict = judge_node(node_state("inf1.6xlarge", used_devices=[0, 1]), [], mixed)
    assert verdict.fits
    (_, device_block), (_, core_block) = verdict.blocks
    # The core block must avoid the device taken whole by the same container.
    assert not {c // 4 for c in core_block} & set(device_block)


def test_bound_pods_not_yet_published_are_taken_out_first() -> None:
    state = node_state("inf1.6xlarge", used_devices=[0, 1])
    pending = PendingPod("ml/earlier", 1, single(Resource.NEURON, 2))
    assert judge_node(state, [], single(Resource.NEURON, 2)).fits
    assert judge_node(state, [pending], single(Resource.NEURON, 2)).kind == "no_block"
    # Once the plugin publishes it, the state already accounts for it: it must not be taken twice.
    published = node_state(
        "inf1.6xlarge", used_devices=[0, 1, 2, 3], pods={"ml/earlier": PodHolding(frozenset({2, 3}))}
    )
    assert judge_node(published, [pending], single(Resource.NEURON, 1)).kind == "no_block"
    halves = node_state("inf1.6xlarge", used_devices=[0, 1], pods={"ml/earlier": PodHolding(frozenset({0, 1}))})
    assert judge_node(halves, [pending], single(Resource.NEURON, 2)).fits


def test_pending_pods_are_predicted_in_the_order_they_were_bound() -> None:
    state = node_state("inf1.24xlarge", used_devices=range(4, 16))  # 0-3 free
    first = PendingPod("a/bound-first", 1, single(Resource.NEURON, 3))
    second = PendingPod("a/bound-second", 2, single(Resource.NEURON, 2))
    # The first takes 3 of the 4; the second cannot be placed (the node will refuse it) and takes nothing.
    assert judge_node(state, [second, first], single(Resource.NEURON, 1)).fits
    assert judge_node(state, [second, first], single(Resource.NEURON, 2)).kind == "no_block"
    # Bound the other way round, the 2 go first and leave 2 free: a pod of 2 fits, none of 3.
    swapped = [PendingPod(first.key, 2, first.request), PendingPod(second.key, 1, second.request)]
    assert judge_node(state, swapped, single(Resource.NEURON, 2)).fits


def test_pods_of_unknown_order_must_leave_room_in_every_order() -> None:
    state = node_state("inf1.24xlarge", used_devices=range(4, 16))  # 0-3 free
    tied = [PendingPod("a/x", 5, single(Resource.NEURON, 3)), PendingPod("a/y", 5, single(Resource.NEURON, 2))]
    # x first: 1 left; y first: 2 left. A pod of 2 fits only in one of them.
    assert judge_node(state, tied, single(Resource.NEURON, 1)).fits
    assert judge_node(state, tied, single(Resource.NEURON, 2)).kind == "no_block"


def test_best_fit_scores_highest() -> None:
    request = single(Resource.NEURON, 2)
    snug = judge_node(node_state("inf1.24xlarge", used_devices=set(range(16)) - {6, 7}), [], request)
    roomy = judge_node(node_state("inf1.24xlarge"), [], request)
    assert snug.score == 10
    assert 1 <= roomy.score < snug.score


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_empty_request_fits_everywhere_with_score_zero(name: str) -> None:
    verdict = judge(node_state(name).topology, Free.everything(node_state(name).topology), PodRequest(()))
    assert verdict.fits and verdict.score == 0


def test_garbled_and_missing_annotations_are_unknown_not_a_crash() -> None:
    view = Verdicts(ClusterStore())
    request = single(Resource.NEURON, 1)
    good = encode_node_state(node_state("inf2.48xlarge"))
    for notes, words in [
        ({}, "no neuron-contig.io/ annotations"),
        ({**good, "neuron-contig.io/devices": "twelve"}, "neuron-contig.io/devices"),
        ({**good, "neuron-contig.io/free-devices": "9-3"}, "neuron-contig.io/free-devices"),
        ({**good, "neuron-contig.io/pods": "{not json"}, "neuron-contig.io/pods"),
        ({k: v for k, v in good.items() if not k.endswith("observed-at")}, "observed-at"),
    ]:
        verdict = view.verdict_for(parse_node(node_doc("n", annotations=notes)), request)
        assert verdict.kind == "unknown"
        assert verdict.reason.startswith("(unknown)") and words in verdict.reason


def test_a_node_refused_while_devices_are_unhealthy_says_so() -> None:
    # Health issue: a user whose pod is refused must learn the node lacks a block because hardware failed, and
    # where to look; the reason stays free of IDs (one line per shape in the scheduler's event), the detail
    # names them.
    four = single(Resource.NEURON, 4)
    sick = judge_node(node_state("inf2.48xlarge", used_devices=range(8), unhealthy=[9]), [], four)
    assert sick.kind == "no_block"
    assert "unhealthy" in sick.reason and "NeuronDevicesHealthy" in sick.reason
    assert "9" not in sick.reason
    assert "unhealthy devices 9" in sick.detail
    full = judge_node(node_state("inf2.48xlarge", used_devices=range(9)), [], four)
    assert full.kind == "no_block" and "unhealthy" not in full.reason + full.detail
    fits = judge_node(node_state("inf2.48xlarge", unhealthy=[9]), [], four)
    assert fits.fits and fits.reason == ""
