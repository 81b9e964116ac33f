"""The one rule for a pod's Neuron needs (`neuronalloc.requests`), which the extender places by and
`kubectl neuron` shows: properties over random pods with init containers, sidecars and app containers."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronalloc import Resource
from neuronalloc.requests import MAX_CONTAINER_SIZE, RequestError, pod_request_from_spec
from neuronalloc.text import MAX_MESSAGE

# (kind, resource, size): kind "init" | "sidecar" | "app"
Container = tuple[str, Resource, int]


def _doc(name: str, resource: Resource, quantity: str, *, sidecar: bool = False, key: str = "limits") -> Any:
    doc: dict[str, Any] = {"name": name, "resources": {key: {resource.value: quantity}}}
    if sidecar:
        doc["restartPolicy"] = "Always"
    return doc


def _spec(containers: list[Container]) -> dict[str, Any]:
    inits = [_doc(f"i{n}", r, str(s), sidecar=k == "sidecar") for n, (k, r, s) in enumerate(containers) if k != "app"]
    apps = [_doc(f"a{n}", r, str(s)) for n, (k, r, s) in enumerate(containers) if k == "app"]
    return {"initContainers": inits, "containers": apps}


pods = st.lists(
    st.tuples(st.sampled_from(["init", "sidecar", "app"]), st.sampled_from(list(Resource)), st.integers(0, 16)),
    max_size=8,
)


def _kubernetes_effective(containers: list[Container], resource: Resource) -> int:
    """Kubernetes' effective request, as its documentation states it for sidecars."""
    inits = [(k, s) for k, r, s in containers if k != "app" and r is resource]
    apps = sum(s for k, r, s in containers if k == "app" and r is resource)
    sidecars = sum(s for k, s in inits if k == "sidecar")
    highest_init = max(
        (s + sum(s2 for k2, s2 in inits[:i] if k2 == "sidecar") for i, (k, s) in enumerate(inits) if k == "init"),
        default=0,
    )
    return max(apps + sidecars, highest_init)


@settings(max_examples=300, deadline=None)
@given(pods)
def test_peak_is_kubernetes_effective_request(containers: list[Container]) -> None:
    request = pod_request_from_spec(_spec(containers))
    for resource in Resource:
        assert request.peak(resource) == _kubernetes_effective(containers, resource)
        kept = sum(s for k, r, s in containers if k != "init" and r is resource)
        assert request.total(resource) == kept


@settings(max_examples=200, deadline=None)
@given(pods)
def test_needs_follow_kubelets_order_and_only_regular_inits_hand_back(containers: list[Container]) -> None:
    request = pod_request_from_spec(_spec(containers))
    inits = [c for c in containers if c[0] != "app" and c[2] > 0]
    apps = [c for c in containers if c[0] == "app" and c[2] > 0]
    assert [(n.resource, n.size, n.keeps) for n in request.needs] == [(r, s, k != "init") for k, r, s in inits + apps]
    assert request.empty == (not request.needs)


def test_requests_alone_count_and_limits_win() -> None:
    only_requests = {"containers": [_doc("a", Resource.NEURONCORE, "3", key="requests")]}
    assert pod_request_from_spec(only_requests).peak(Resource.NEURONCORE) == 3
    both = {"containers": [{"name": "a", "resources": {"limits": {Resource.NEURON.value: "2"},
                                                        "requests": {Resource.NEURON.value: "5"}}}]}  # fmt: skip
    assert pod_request_from_spec(both).peak(Resource.NEURON) == 2


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=2000).filter(lambda t: not (t.isascii() and t.isdigit())),
        st.integers(MAX_CONTAINER_SIZE + 1, 10**4000).map(str),
    ),
    st.sampled_from(["containers", "initContainers"]),
)
def test_a_malformed_quantity_is_an_error_never_a_size(quantity: str, where: str) -> None:
    spec = {where: [_doc("c" * 5000, Resource.NEURON, quantity, sidecar=where == "initContainers")]}
    with pytest.raises(RequestError) as caught:
        pod_request_from_spec(spec)
    assert len(str(caught.value)) <= MAX_MESSAGE


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=12))  # fmt: skip
def test_any_spec_gives_a_request_or_request_error(spec: Any) -> None:
    with contextlib.suppress(RequestError):
        pod_request_from_spec(spec)
