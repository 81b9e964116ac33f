"""Hostile input for the core's decoders: each raises only its own error, bounded in length, whatever the text.

The attacks come first as examples (each once broke a component: a 5,000-digit annotation made `int()` raise
ValueError inside the extender's first list, so it never became ready), then hypothesis over arbitrary text.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronalloc import NodeStateError, RangeListError, decode_node_state, decode_ranges
from neuronalloc import nodestate as ns
from neuronalloc.text import MAX_MESSAGE, shorten

GOOD = {
    ns.INSTANCE_TYPE: "inf1.6xlarge",
    ns.DEVICES: "4",
    ns.CORES_PER_DEVICE: "4",
    ns.FREE_DEVICES: "0-3",
    ns.FREE_CORES: "0-15",
    ns.UNHEALTHY_DEVICES: "",
    ns.PODS: "{}",
    ns.OBSERVED_AT: "2026-11-22T02:05:56Z",
}

HUGE = "9" * 5000


def _decode(**changes: str) -> None:
    decode_node_state({**GOOD, **changes})


@pytest.mark.parametrize(
    "changes",
    [
        {ns.DEVICES: HUGE},
        {ns.CORES_PER_DEVICE: HUGE},
        {ns.FREE_DEVICES: HUGE},
        {ns.FREE_DEVICES: f"0-{HUGE}"},
        {ns.FREE_CORES: ",".join(["1"] * 100_000)},
        {ns.UNHEALTHY_DEVICES: f"{HUGE}-{HUGE}"},
        {ns.PODS: '{"a/b": {"devices": "' + HUGE + '"}}'},
        {ns.PODS: "[" * 100_000 + "]" * 100_000},
        {ns.PODS: '{"a/b": ' * 50_000 + "{}" + "}" * 50_000},
        {ns.PODS: "{" + ",".join(f'"ns/p{i}": {{}}' for i in range(200_000)) + "}"},
        {ns.OBSERVED_AT: HUGE},
        {ns.INSTANCE_TYPE: "x" * 100_000},
        {ns.SERVING: "x" * 100_000},
        {ns.PLUGIN_ADDRESS: "x" * 100_000},
        {ns.PLUGIN_ADDRESS: "example.com:80"},
        {ns.PLUGIN_ADDRESS: "10.0.0.1:99999"},
    ],
    ids=lambda changes: "{}:{}".format(*next(iter(changes.items()))).removeprefix(ns.ANNOTATION_PREFIX)[:30],
)
def test_garbled_annotations_raise_node_state_error_with_a_short_message(changes: dict[str, str]) -> None:
    with pytest.raises(NodeStateError) as caught:
        _decode(**changes)
    assert len(str(caught.value)) <= MAX_MESSAGE


@pytest.mark.parametrize("text", [HUGE, f"0-{HUGE}", ",".join(["7"] * 200_000), "٣", "01x", "-", "1--2"])
def test_range_lists_raise_their_own_error_with_a_short_message(text: str) -> None:
    with pytest.raises(RangeListError) as caught:
        decode_ranges(text)
    assert len(str(caught.value)) <= MAX_MESSAGE


def test_serving_and_plugin_address_are_optional_and_decoded() -> None:
    state = decode_node_state(GOOD)
    assert state.serving and state.not_serving_reason == "" and state.plugin_address == ""
    state = decode_node_state({**GOOD, ns.SERVING: "stopping", ns.PLUGIN_ADDRESS: "10.0.1.7:9410"})
    assert not state.serving
    assert state.not_serving_reason == "stopping"
    assert state.plugin_address == "10.0.1.7:9410"
    assert decode_node_state({**GOOD, ns.PLUGIN_ADDRESS: "[fd00::7]:9410"}).plugin_address == "[fd00::7]:9410"


def test_shorten_keeps_both_ends_and_says_how_much_was_cut() -> None:
    text = "a" * 1000 + "END"
    short = shorten(text, 100)
    assert len(short) <= 100 and short.endswith("END") and "chars cut" in short
    assert shorten("small", 100) == "small"


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_decode_ranges_raises_only_its_own_error(text: str) -> None:
    try:
        decode_ranges(text)
    except RangeListError as error:
        assert len(str(error)) <= MAX_MESSAGE


ANNOTATION_TEXT = st.one_of(
    st.text(max_size=200),
    st.from_regex(r"[0-9,\-]{0,40}", fullmatch=True),
    st.builds(lambda n: "9" * n, st.integers(0, 6000)),
)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(ns.ALL_KEYS), ANNOTATION_TEXT, max_size=len(ns.ALL_KEYS)))
def test_decode_node_state_raises_only_its_own_error(changes: dict[str, str]) -> None:
    try:
        decode_node_state({**GOOD, **changes})
    except NodeStateError as error:
        assert len(str(error)) <= MAX_MESSAGE


@settings(max_examples=200)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=30))  # fmt: skip
def test_any_json_in_the_pods_annotation_raises_only_node_state_error(doc: object) -> None:
    import json

    try:
        decode_node_state({**GOOD, ns.PODS: json.dumps(doc)})
    except NodeStateError as error:
        assert len(str(error)) <= MAX_MESSAGE
