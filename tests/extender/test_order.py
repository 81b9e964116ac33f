"""Pods bound but not yet published are predicted in the order kubelet admits them: the order they were bound.

Kubelet's pod source delivers each binding to the node as it happens (one pod per ADD), and the device manager
allocates at admission, in that order; the plugin's allocator then chooses each block from what the pods
admitted before it left free. A prediction in any other order (creation order, say) promises blocks kubelet
will not hand out: on a trn1.32xlarge, four pods bound in an order unlike their creation order were each
judged to fit, yet in bind order the last one finds no block and kubelet refuses it.

The binder knows its own order (each bind holds its claim before its POST, under the node's lock), and the pod
watch delivers events in the order etcd committed them, which is the order kubelet's own watch sees. Only a
full list loses the order: there the PodScheduled condition's time (written by the API server in the same
update as the binding, to the second) is the evidence, and pods it cannot tell apart are judged in every order
they may have been bound in; a node with too many such pods is refused until its plugin publishes them.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.cache import ClusterStore
from extender.verdicts import Verdicts
from extender.wire import PodInfo, parse_pod
from neuronalloc import Free, NodeState, Refusal, Resource, allocate

from .builders import node_doc, node_state, pod_doc

NODE = "n"
# Devices 4, 5, 9, 10, 12, 14, 15 held: on trn1 (aligned blocks of 1, 4, 8, 16; two cores per device).
TRN_STATE = node_state("trn1.32xlarge", used_devices=[4, 5, 9, 10, 12, 14, 15])
# Created p0 < p1 < p2 < p3; bound p3, p0, p2, p1.
SPECS = {"p0": {"cores": 4}, "p1": {"cores": 4}, "p2": {"neuron": 1}, "p3": {"cores": 4}}
BIND_ORDER = ["p3", "p0", "p2", "p1"]


def created(name: str) -> str:
    return f"2026-11-22T02:00:0{name[-1]}Z"


def doc(name: str, *, node_name: str = "", scheduled: str = "", **needs: int) -> dict[str, Any]:
    pod = pod_doc(name, created=created(name), node_name=node_name, **needs)
    if scheduled:
        pod["status"]["conditions"] = [
            {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-22T01:00:00Z"},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled},
        ]
    return pod


def fresh_view(state: NodeState = TRN_STATE, pods: tuple[Any, ...] = ()) -> Verdicts:
    view = Verdicts(ClusterStore())
    view.store.apply("nodes", "SYNC", (node_doc(NODE, state),))
    view.store.apply("pods", "SYNC", pods)
    return view


def kubelet_refuses(state: NodeState, admitted: list[PodInfo]) -> list[str]:
    """Kubelet admitting `admitted` in that order, each block chosen by the plugin's allocator from what is left:
    the pods that find no block."""
    topo = state.topology
    free = Free(frozenset(state.free_devices), frozenset(state.free_cores))
    refused = []
    for pod in admitted:
        after = free
        for name, size, keeps in pod.request.shape:
            resource = Resource(name)
            block = allocate(topo, resource, after.of(resource), size)
            if isinstance(block, Refusal):
                refused.append(pod.key)
                break
            if keeps:
                after = after.take(topo, resource, block)
        else:
            free = after
    return refused


def bind_as_the_binder(view: Verdicts, pods: list[PodInfo]) -> list[PodInfo]:
    """Each pod as the active binder binds it: judged under the node's lock, held, POSTed, confirmed."""
    bound = []
    for pod in pods:
        if view.judge_for_bind(NODE, TRN_STATE, pod).fits:
            view.store.hold(pod, NODE)
            view.store.confirm(pod.key)
            bound.append(pod)
    return bound


def test_the_binders_own_binds_are_predicted_in_the_order_it_made_them() -> None:
    view = fresh_view()
    pods = [parse_pod(doc(name, **SPECS[name])) for name in BIND_ORDER]
    bound = bind_as_the_binder(view, pods)
    assert kubelet_refuses(TRN_STATE, bound) == [], "a pod the binder let through finds no block at admission"


def test_binds_seen_on_the_watch_are_predicted_in_the_order_it_delivered_them() -> None:
    """Bound by another replica (the holder before a Lease change): the watch's order is etcd's, and kubelet's."""
    view = fresh_view()
    for name in BIND_ORDER[:-1]:
        view.store.apply("pods", "ADDED", (doc(name, node_name=NODE, **SPECS[name]),))
    last = parse_pod(doc(BIND_ORDER[-1], **SPECS[BIND_ORDER[-1]]))
    verdict = view.judge_for_bind(NODE, TRN_STATE, last)
    earlier = [parse_pod(doc(name, node_name=NODE, **SPECS[name])) for name in BIND_ORDER[:-1]]
    assert verdict.fits == (kubelet_refuses(TRN_STATE, [*earlier, last]) == [])
    assert not verdict.fits


def test_a_list_orders_pods_by_their_podscheduled_time_not_their_creation() -> None:
    listed = [
        doc(name, node_name=NODE, scheduled=f"2026-11-22T03:00:0{i}Z", **SPECS[name])
        for i, name in enumerate(BIND_ORDER[:-1])
    ]
    view = fresh_view(pods=tuple(reversed(listed)))
    assert not view.judge_for_bind(NODE, TRN_STATE, parse_pod(doc("p1", **SPECS["p1"]))).fits


def test_pods_a_list_cannot_order_are_judged_in_every_order_they_may_have_been_bound_in() -> None:
    """Three pods scheduled in the same second: in one of their orders (the real one) p1 finds no block."""
    listed = tuple(
        doc(name, node_name=NODE, scheduled="2026-11-22T03:00:00Z", **SPECS[name]) for name in BIND_ORDER[:-1]
    )
    view = fresh_view(pods=listed)
    p1 = parse_pod(doc("p1", **SPECS["p1"]))
    verdict = view.judge_for_bind(NODE, TRN_STATE, p1)
    assert not verdict.fits
    assert view.verdict(NODE, p1.request, scored=False).kind == "no_block"
    assert view.verdict(NODE, p1.request, scored=True).kind == "no_block"
    # A pod that fits whatever order they were bound in still fits: one device, say.
    one = parse_pod(doc("p9", neuron=1))
    every_order_fits = all(
        kubelet_refuses(TRN_STATE, [*(parse_pod(listed[i]) for i in order), one]) == []
        for order in itertools.permutations(range(3))
    )
    assert every_order_fits and view.judge_for_bind(NODE, TRN_STATE, one).fits


def test_a_node_with_too_many_pods_of_unknown_order_is_refused_until_its_plugin_publishes_them() -> None:
    roomy = node_state("trn1.32xlarge")
    listed = tuple(doc(f"q{i}", node_name=NODE, scheduled="2026-11-22T03:00:00Z", cores=1) for i in range(8))
    view = fresh_view(roomy, listed)
    verdict = view.verdict(NODE, parse_pod(doc("p9", neuron=1)).request, scored=False)
    assert verdict.kind == "no_block" and "order" in verdict.reason
    # Once few enough are left (the others published, or gone), every order they may have been bound in is judged.
    view.store.apply("pods", "DELETED", listed[:5])
    assert view.verdict(NODE, parse_pod(doc("p9", neuron=1)).request, scored=False).fits


_SIZES = {"trn1.32xlarge": ((1, 4, 8), (1, 2, 4, 8)), "inf2.48xlarge": ((1, 2, 3, 4), (1, 2, 3, 4, 6))}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[NodeState, list[tuple[str, dict[str, int]]], list[int]]:
    kind = draw(st.sampled_from(sorted(_SIZES)))
    devices, cores = _SIZES[kind]
    count = {"trn1.32xlarge": 16, "inf2.48xlarge": 12}[kind]
    used = draw(st.lists(st.integers(0, count - 1), unique=True, max_size=count // 2))
    state = node_state(kind, used_devices=used)
    specs = draw(
        st.lists(
            st.one_of(
                st.sampled_from(devices).map(lambda n: {"neuron": n}),
                st.sampled_from(cores).map(lambda n: {"cores": n}),
            ),
            min_size=2,
            max_size=6,
        )
    )
    order = draw(st.permutations(range(len(specs))))
    return state, [(f"p{i}", spec) for i, spec in enumerate(specs)], list(order)


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.booleans())
def test_every_pod_bind_lets_through_is_admitted_in_bind_order(
    scenario: tuple[NodeState, list[tuple[str, dict[str, int]]], list[int]], through_watch: bool
) -> None:
    state, specs, order = scenario
    view = fresh_view(state)
    bound: list[PodInfo] = []
    for index in order:
        name, needs = specs[index]
        pod = parse_pod(doc(name, **needs))
        if not view.judge_for_bind(NODE, state, pod).fits:
            continue
        if through_watch:
            view.store.apply("pods", "ADDED", (doc(name, node_name=NODE, **needs),))
        else:
            view.store.hold(pod, NODE)
            view.store.confirm(pod.key)
        bound.append(pod)
    assert kubelet_refuses(state, bound) == []
