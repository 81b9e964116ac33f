"""Body caps, the in-flight budget, and the decoded-size estimate the budget is charged with."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.limits import BIND_BODY_BYTES, BodyCaps, Budget, decoded_estimate

from .builders import node_doc, node_state, pod_doc

_KEYS = st.text(max_size=12) | st.sampled_from(["metadata", "name", "a", "spec"])
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.text(alphabet="a\u00e9\u0100\U0001f600", max_size=40),
    lambda inner: st.lists(inner, max_size=40) | st.dictionaries(_KEYS, inner, max_size=40),
    max_leaves=400,
)


def decoded_size(body: bytes) -> int:
    """What orjson allocates to decode `body`, plus the body itself."""
    tracemalloc.start()
    try:
        doc = orjson.loads(body)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del doc
    return used + len(body)


@settings(max_examples=120, deadline=None)
@given(_JSON)
def test_the_estimate_is_never_below_what_decoding_takes(doc: Any) -> None:
    body = orjson.dumps(doc)
    assert decoded_estimate(body) >= decoded_size(body)


ADVERSARIAL = {
    "empty objects": b"[" + b",".join([b"{}"] * 50_000) + b"]",
    "empty arrays": b"[" + b",".join([b"[]"] * 50_000) + b"]",
    "one-key objects": b"[" + b",".join([b'{"a":0}'] * 50_000) + b"]",
    "nested": b"[" + b",".join([b'{"a":{"b":[]}}'] * 30_000) + b"]",
    "floats": b"[" + b",".join([b"1e5"] * 50_000) + b"]",
    "big ints": b"[" + b",".join([b"-9223372036854775807"] * 50_000) + b"]",
    "distinct keys": b"{" + b",".join(b'"k%d":0' % i for i in range(50_000)) + b"}",
    "short strings": b"[" + b",".join([b'"a"'] * 50_000) + b"]",
    "wide string": orjson.dumps(["a" * 500_000 + "\U0001f600"]),
    "escaped wide string": b'["' + b"a" * 500_000 + b'\\ud83d\\ude00"]',
}


def test_the_estimate_bounds_the_worst_shapes() -> None:
    for name, body in ADVERSARIAL.items():
        assert decoded_estimate(body) >= decoded_size(body), name


def test_the_estimate_of_real_objects_is_within_three_times_the_truth() -> None:
    nodes = [node_doc(f"ip-10-0-1-{i}.us-west-2.compute.internal", node_state("trn1.32xlarge")) for i in range(300)]
    for doc in ({"Pod": pod_doc("p", neuron=4), "Nodes": {"items": nodes}, "NodeNames": None},
                {"Pod": pod_doc("p", neuron=4), "NodeNames": [f"ip-10-0-1-{i}" for i in range(5000)]}):  # fmt: skip
        body = orjson.dumps(doc)
        assert decoded_size(body) <= decoded_estimate(body) <= 3 * decoded_size(body)


def test_caps_by_verb_and_mode() -> None:
    cached = BodyCaps(nodes=64 << 20, names=4 << 20, standalone=False)
    assert (cached.for_verb("filter"), cached.for_verb("prioritize")) == (4 << 20, 4 << 20)
    assert cached.for_verb("bind") == BIND_BODY_BYTES
    assert BodyCaps(nodes=64 << 20, names=4 << 20, standalone=True).for_verb("filter") == 64 << 20
    # --max-body-bytes stays the largest body ever accepted.
    assert BodyCaps(nodes=1 << 20, names=4 << 20, standalone=False).for_verb("filter") == 1 << 20


def test_budget_reserves_grows_and_releases() -> None:
    budget = Budget(100)
    first = budget.reserve(60)
    assert first is not None and budget.held == 60
    assert budget.reserve(50) is None and budget.held == 60
    second = budget.reserve(40)
    assert second is not None and not second.grow(41) and budget.held == 100
    first.release()
    assert second.grow(90) and budget.held == 90
    second.release()
    assert budget.held == 0
