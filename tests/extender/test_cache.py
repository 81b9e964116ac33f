"""The watch cache on its own: what counts against a node, and when it stops counting (fake clock)."""

from __future__ import annotations

from extender.cache import ClusterView
from extender.wire import parse_pod
from neuronalloc import Resource

from .builders import node_doc, node_state, pod_doc
from .test_fit import single


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def view_with(clock: Clock) -> ClusterView:
    view = ClusterView(clock=clock, binding_ttl=60)
    view.apply("nodes", "SYNC", (node_doc("a", node_state("inf1.6xlarge")),))
    view.apply("pods", "SYNC", ())
    return view


def test_remembered_binding_counts_until_the_watch_shows_the_pod() -> None:
    clock = Clock()
    view = view_with(clock)
    four = single(Resource.NEURON, 4)
    assert view.verdict("a", four).fits
    view.remember_binding(parse_pod(pod_doc("p", neuron=4)), "a")
    assert view.verdict("a", four).kind == "no_block"
    # The watch shows it bound: now it counts as a watched pod (once), no longer as a remembered binding.
    view.apply("pods", "MODIFIED", (pod_doc("p", neuron=4, node_name="a"),))
    assert view.remembered_on("a") == ()
    assert view.verdict("a", four).kind == "no_block"
    view.apply("pods", "DELETED", (pod_doc("p", neuron=4, node_name="a"),))
    assert view.verdict("a", four).fits


def test_remembered_binding_expires() -> None:
    clock = Clock()
    view = view_with(clock)
    view.remember_binding(parse_pod(pod_doc("p", neuron=4)), "a")
    assert view.verdict("a", single(Resource.NEURON, 1)).kind == "no_block"
    clock.now += 61
    assert view.verdict("a", single(Resource.NEURON, 1)).fits  # expired before judging, memo dropped
    assert view.remembered_on("a") == ()


def test_pod_moving_or_finishing_releases_its_node() -> None:
    view = view_with(Clock())
    view.apply("nodes", "ADDED", (node_doc("b", node_state("inf1.6xlarge")),))
    view.apply("pods", "ADDED", (pod_doc("p", neuron=4, node_name="a", phase="Running"),))
    four = single(Resource.NEURON, 4)
    assert [view.verdict(n, four).kind for n in "ab"] == ["no_block", "fit"]
    view.apply("pods", "MODIFIED", (pod_doc("p", neuron=4, node_name="a", phase="Succeeded"),))
    assert [view.verdict(n, four).kind for n in "ab"] == ["fit", "fit"]


def test_size_staleness_and_sync() -> None:
    clock = Clock()
    view = ClusterView(clock=clock)
    assert not view.synced
    view.apply("nodes", "SYNC", (node_doc("a", node_state("inf1.6xlarge")), node_doc("b")))
    view.apply("pods", "SYNC", ())
    assert view.synced and view.size == 2
    clock.now += 42
    assert view.staleness_seconds() == 42
    view.apply("nodes", "CONTACT", ())
    assert view.staleness_seconds() == 0
    view.apply("nodes", "SYNC", (node_doc("b"),))  # a relist drops nodes that are gone
    assert view.size == 1
    assert view.verdict("a", single(Resource.NEURON, 1)).reason.startswith("(unknown) node is not in")


def test_malformed_watch_objects_are_skipped_not_fatal() -> None:
    view = view_with(Clock())
    view.apply("nodes", "MODIFIED", ({"metadata": {}},))
    view.apply("pods", "ADDED", ({"metadata": {"name": "x"}, "spec": {"containers": "nope"}},))
    assert view.size == 1 and view.verdict("a", single(Resource.NEURON, 1)).fits
