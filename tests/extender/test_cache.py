"""The watch cache on its own: what counts against a node, and when it stops counting (fake clock)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from extender.cache import ClusterStore
from extender.verdicts import Verdicts
from extender.wire import parse_node, parse_pod
from neuronalloc import Resource

from .builders import node_doc, node_state, pod_doc
from .test_fit import single


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def view_with(clock: Clock) -> Verdicts:
    view = Verdicts(ClusterStore(clock=clock, binding_ttl=60))
    view.store.apply("nodes", "SYNC", (node_doc("a", node_state("inf1.6xlarge")),))
    view.store.apply("pods", "SYNC", ())
    return view


def test_remembered_binding_counts_until_the_watch_shows_the_pod() -> None:
    clock = Clock()
    view = view_with(clock)
    four = single(Resource.NEURON, 4)
    assert view.verdict("a", four).fits
    view.store.remember_binding(parse_pod(pod_doc("p", neuron=4)), "a")
    assert view.verdict("a", four).kind == "no_block"
    # The watch shows it bound: now it counts as a watched pod (once), no longer as a remembered binding.
    view.store.apply("pods", "MODIFIED", (pod_doc("p", neuron=4, node_name="a"),))
    assert view.store.remembered_on("a") == ()
    assert view.verdict("a", four).kind == "no_block"
    view.store.apply("pods", "DELETED", (pod_doc("p", neuron=4, node_name="a"),))
    assert view.verdict("a", four).fits


def test_remembered_binding_expires() -> None:
    clock = Clock()
    view = view_with(clock)
    view.store.remember_binding(parse_pod(pod_doc("p", neuron=4)), "a")
    assert view.verdict("a", single(Resource.NEURON, 1)).kind == "no_block"
    clock.now += 61
    assert view.verdict("a", single(Resource.NEURON, 1)).fits  # expired before judging, memo dropped
    assert view.store.remembered_on("a") == ()


def test_an_expired_binding_is_dropped_by_every_lookup_without_the_caller_asking() -> None:
    """Nodes mode and bind judge with expiry done inside the lookup: no caller has to remember to expire first
    (on the old code, `verdict_for` still counted the stale binding unless its caller had expired it)."""
    clock = Clock()
    view = view_with(clock)
    doc = node_doc("a", node_state("inf1.6xlarge"))
    view.store.remember_binding(parse_pod(pod_doc("p", neuron=4)), "a")
    one = single(Resource.NEURON, 1)
    assert view.verdict_for(parse_node(doc), one).kind == "no_block"
    clock.now += 61
    assert view.verdict_for(parse_node(doc), one).fits
    view.store.remember_binding(parse_pod(pod_doc("q", neuron=4)), "a")
    state, _ = view.store.node_state("a")
    assert state is not None
    assert view.judge_for_bind("a", state, parse_pod(pod_doc("r", neuron=1))).kind == "no_block"
    clock.now += 61
    assert view.judge_for_bind("a", state, parse_pod(pod_doc("r", neuron=1))).fits


def test_pod_moving_or_finishing_releases_its_node() -> None:
    view = view_with(Clock())
    view.store.apply("nodes", "ADDED", (node_doc("b", node_state("inf1.6xlarge")),))
    view.store.apply("pods", "ADDED", (pod_doc("p", neuron=4, node_name="a", phase="Running"),))
    four = single(Resource.NEURON, 4)
    assert [view.verdict(n, four).kind for n in "ab"] == ["no_block", "fit"]
    view.store.apply("pods", "MODIFIED", (pod_doc("p", neuron=4, node_name="a", phase="Succeeded"),))
    assert [view.verdict(n, four).kind for n in "ab"] == ["fit", "fit"]


def test_size_staleness_and_sync() -> None:
    clock = Clock()
    view = Verdicts(ClusterStore(clock=clock))
    assert not view.store.synced
    view.store.apply("nodes", "SYNC", (node_doc("a", node_state("inf1.6xlarge")), node_doc("b")))
    view.store.apply("pods", "SYNC", ())
    assert view.store.synced and view.store.size == 2
    clock.now += 42
    assert view.store.staleness_seconds() == 42
    view.store.apply("nodes", "CONTACT", ())
    assert view.store.staleness_seconds() == 0
    view.store.apply("nodes", "SYNC", (node_doc("b"),))  # a relist drops nodes that are gone
    assert view.store.size == 1
    assert view.verdict("a", single(Resource.NEURON, 1)).reason.startswith("(unknown) node is not in")


def test_malformed_watch_objects_are_skipped_not_fatal() -> None:
    view = view_with(Clock())
    view.store.apply("nodes", "MODIFIED", ({"metadata": {}},))
    view.store.apply("pods", "ADDED", ({"metadata": {"name": "x"}, "spec": {"containers": "nope"}},))
    assert view.store.size == 1 and view.verdict("a", single(Resource.NEURON, 1)).fits


def _heartbeat(doc: dict[str, object], seconds: int) -> dict[str, object]:
    """The same node a heartbeat later: only `observed-at` differs."""
    import copy

    beat = copy.deepcopy(doc)
    notes = beat["metadata"]["annotations"]  # type: ignore[index]
    notes["neuron-contig.io/observed-at"] = f"2026-11-22T02:{seconds // 60:02d}:{seconds % 60:02d}Z"
    return beat


def test_a_heartbeat_keeps_every_memoised_verdict() -> None:
    """The plugin republishes `observed-at` every 60 s with nothing else changed: no verdict is dropped."""
    view = view_with(Clock())
    doc = node_doc("a", node_state("inf1.6xlarge", used_devices=[0]))
    view.store.apply("nodes", "MODIFIED", (doc,))
    four = single(Resource.NEURON, 2)
    before = view.verdict("a", four)
    view.store.apply("nodes", "MODIFIED", (_heartbeat(doc, 61),))
    assert view.verdict("a", four) is before
    # Nodes mode memoises by the request's annotations: the same holds there.
    from extender.wire import parse_node

    nodes_before = view.verdict_for(parse_node(doc), four)
    assert view.verdict_for(parse_node(_heartbeat(doc, 122)), four) is nodes_before


def test_a_real_change_still_drops_the_memo() -> None:
    view = view_with(Clock())
    four = single(Resource.NEURON, 4)
    assert view.verdict("a", four).fits
    view.store.apply("nodes", "MODIFIED", (node_doc("a", node_state("inf1.6xlarge", used_devices=[1])),))
    assert view.verdict("a", four).kind == "no_block"


@given(st.text(max_size=24) | st.sampled_from(["2026-11-22T02:05:56Z", "2026-13-22T02:05:56Z", "2026-11-22 02:05:56Z"]))
def test_the_state_key_tells_a_garbled_observed_at_from_a_good_one(observed: str) -> None:
    """Nodes that differ only in observed-at share a state key exactly when both decode alike."""
    from extender.cache import state_key
    from neuronalloc import NodeStateError, decode_node_state, encode_node_state

    good = encode_node_state(node_state("inf1.6xlarge"))
    other = {**good, "neuron-contig.io/observed-at": observed}
    try:
        decode_node_state(other)
        decodes = True
    except NodeStateError:
        decodes = False
    assert (state_key(other) == state_key(good)) == decodes
    missing = {k: v for k, v in good.items() if k != "neuron-contig.io/observed-at"}
    assert state_key(missing) != state_key(good)


def test_the_watch_fed_view_names_unhealthy_devices_in_filter_and_bind() -> None:
    """The NodeNames path and bind judge from the view's predicted free sets, not through `judge_node`: a node
    short of a block because hardware failed says so there too (the health issue's wording)."""
    view = Verdicts(ClusterStore(clock=Clock()))
    sick = node_state("inf2.48xlarge", used_devices=range(8), unhealthy=[9])
    view.store.apply("nodes", "SYNC", (node_doc("sick", sick),))
    view.store.apply("pods", "SYNC", ())
    four = single(Resource.NEURON, 4)
    for scored in (False, True):
        verdict = view.verdict("sick", four, scored=scored)
        assert verdict.kind == "no_block" and "NeuronDevicesHealthy" in verdict.reason
    pod = parse_pod(pod_doc("p", neuron=4))
    at_bind = view.judge_for_bind("sick", sick, pod)
    assert "NeuronDevicesHealthy" in at_bind.reason and "unhealthy devices 9" in at_bind.detail
