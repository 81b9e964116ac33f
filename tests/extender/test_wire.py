"""Parsing real ExtenderArgs documents (hand-built from the Go types, with nulls) and every malformed shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extender.wire import (
    ExtenderArgs,
    NodeInfo,
    WireError,
    decode_json,
    encode_filter_result,
    encode_priorities,
    parse_binding_args,
    parse_extender_args,
)
from neuronalloc import Resource

from .builders import names_args, node_doc, nodes_args, pod_doc

DATA = Path(__file__).parent / "data"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def test_nodenames_mode_document() -> None:
    args = parse_extender_args(load("filter-args-nodenames.json"))
    assert args.nodes is None
    assert args.node_names == (
        "ip-10-0-1-11.us-west-2.compute.internal",
        "ip-10-0-1-12.us-west-2.compute.internal",
        "ip-10-0-1-13.us-west-2.compute.internal",
    )
    assert args.pod.key == "ml/bert-infer-7c9f"
    assert args.pod.uid == "0b7f3c1e-5a8d-4a51-9b83-2f0c6e1d9a10"
    assert args.pod.created == "2026-11-22T01:58:12Z"
    # One container asks for 2 devices; the log shipper asks for nothing Neuron (limits: null).
    assert [(n.container, n.resource, n.size, n.keeps) for n in args.pod.request.needs] == [
        ("server", Resource.NEURON, 2, True)
    ]


def test_nodes_mode_document_with_init_and_sidecar() -> None:
    args = parse_extender_args(load("filter-args-nodes.json"))
    assert args.node_names is None
    assert args.pod.created == ""  # creationTimestamp: null
    assert [n.name for n in args.nodes or ()] == ["trn-a", "cpu-only", "garbled"]
    assert args.nodes is not None and args.nodes[1].annotations == {}
    # kubelet's order: init containers (the regular one hands its cores back), then the app containers.
    assert [(n.container, n.size, n.keeps) for n in args.pod.request.needs] == [
        ("warmup", 2, False),
        ("metrics-sidecar", 1, True),
        ("trainer", 4, True),
    ]
    assert args.pod.request.total(Resource.NEURONCORE) == 5


def test_binding_args_document() -> None:
    args = parse_binding_args(load("bind-args.json"))
    assert (args.pod_key, args.node) == ("ml/bert-infer-7c9f", "ip-10-0-1-11.us-west-2.compute.internal")


def test_both_null_means_no_candidates() -> None:
    args = parse_extender_args({"Pod": pod_doc("p", neuron=1), "Nodes": None, "NodeNames": None})
    assert args.names == ()
    assert orjson.loads(encode_filter_result(args, [], {}, {}))["Nodes"] == {"items": []}


def test_requests_used_when_limits_absent() -> None:
    doc = pod_doc("p", containers=[{"name": "c", "resources": {"requests": {"aws.amazon.com/neuron": 4}}}])
    args = parse_extender_args(names_args(doc, ["n"]))
    assert [(n.resource, n.size) for n in args.pod.request.needs] == [(Resource.NEURON, 4)]


BAD_DOCUMENTS: list[tuple[str, Any, str]] = [
    ("not an object", [], "ExtenderArgs"),
    ("pod missing", {"NodeNames": ["a"]}, "Pod"),
    ("pod null", {"Pod": None, "NodeNames": ["a"]}, "Pod"),
    ("pod metadata missing", {"Pod": {"spec": {}}, "NodeNames": []}, "Pod.metadata"),
    ("pod name missing", {"Pod": {"metadata": {"namespace": "x"}}, "NodeNames": []}, "Pod.metadata.name"),
    ("pod name wrong type", {"Pod": {"metadata": {"name": 7}}, "NodeNames": []}, "Pod.metadata.name"),
    ("NodeNames not a list", {"Pod": pod_doc("p"), "NodeNames": "a,b"}, "NodeNames"),
    ("NodeNames entry wrong type", {"Pod": pod_doc("p"), "NodeNames": ["a", 3]}, "NodeNames[1]"),
    ("NodeNames entry empty", {"Pod": pod_doc("p"), "NodeNames": [""]}, "NodeNames[0]"),
    (
        "NodeNames entry zero",
        {"Pod": pod_doc("p"), "NodeNames": ["a", 0]},
        "NodeNames[1]: expected a node name, got int",
    ),
    ("Nodes not an object", {"Pod": pod_doc("p"), "Nodes": [], "NodeNames": None}, "Nodes"),
    ("Nodes.items wrong type", {"Pod": pod_doc("p"), "Nodes": {"items": {}}}, "Nodes.items"),
    (
        "node without name",
        {"Pod": pod_doc("p"), "Nodes": {"items": [{"metadata": {}}]}},
        "Nodes.items[0].metadata.name",
    ),
    (
        "annotation not a string",
        {"Pod": pod_doc("p"), "Nodes": {"items": [{"metadata": {"name": "n", "annotations": {"a": 1}}}]}},
        "Nodes.items[0].metadata.annotations.a",
    ),
    (
        "containers wrong type",
        {"Pod": {"metadata": {"name": "p"}, "spec": {"containers": {}}}, "NodeNames": []},
        "Pod.spec.containers",
    ),
    (
        "quantity wrong type",
        {
            "Pod": pod_doc("p", containers=[{"name": "c", "resources": {"limits": {"aws.amazon.com/neuron": [4]}}}]),
            "NodeNames": [],
        },
        "Pod.spec.containers[0].resources.limits",
    ),
    (
        "fractional quantity",
        {
            "Pod": pod_doc("p", containers=[{"name": "c", "resources": {"limits": {"aws.amazon.com/neuron": "1.5"}}}]),
            "NodeNames": [],
        },
        "whole number",
    ),
    (
        "negative quantity",
        {
            "Pod": pod_doc(
                "p", containers=[{"name": "c", "resources": {"limits": {"aws.amazon.com/neuroncore": "-2"}}}]
            ),
            "NodeNames": [],
        },
        "whole number",
    ),
    (
        "absurd quantity",
        {
            "Pod": pod_doc(
                "p",
                containers=[{"name": "c", "resources": {"limits": {"aws.amazon.com/neuron": "99999999999999999999"}}}],
            ),
            "NodeNames": [],
        },
        "above 4096",
    ),
    ("too many nodes", {"Pod": pod_doc("p"), "NodeNames": ["n"] * 100_001}, "above the limit"),
]


@pytest.mark.parametrize(("case", "doc", "mentions"), BAD_DOCUMENTS, ids=[c[0] for c in BAD_DOCUMENTS])
def test_malformed_documents_name_the_field(case: str, doc: Any, mentions: str) -> None:
    with pytest.raises(WireError) as caught:
        parse_extender_args(doc)
    assert mentions in str(caught.value)


@pytest.mark.parametrize(
    "doc",
    [{}, {"PodName": "p"}, {"PodName": "p", "PodNamespace": "ns"}, {"PodName": 1, "PodNamespace": "n", "Node": "x"}],
)
def test_malformed_binding_args(doc: Any) -> None:
    with pytest.raises(WireError):
        parse_binding_args(doc)


def test_bad_json_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="not valid JSON"):
        decode_json(b'{"Pod": ')


def test_filter_result_keeps_mode_and_pascal_case() -> None:
    pod = pod_doc("p", neuron=1)
    names = parse_extender_args(names_args(pod, ["a", "b"]))
    out = orjson.loads(encode_filter_result(names, ["b"], {"a": "full"}, {}))
    assert out == {
        "Nodes": None,
        "NodeNames": ["b"],
        "FailedNodes": {"a": "full"},
        "FailedAndUnresolvableNodes": {},
        "Error": "",
    }
    nodes = parse_extender_args(nodes_args(pod, [node_doc("a"), node_doc("b")]))
    out = orjson.loads(encode_filter_result(nodes, ["b"], {}, {"a": "never"}))
    assert out["NodeNames"] is None
    assert [n["metadata"]["name"] for n in out["Nodes"]["items"]] == ["b"]
    assert out["Nodes"]["items"][0] == node_doc("b")  # echoed unchanged
    assert orjson.loads(encode_priorities([("a", 3)])) == [{"Host": "a", "Score": 3}]


_NAME = st.text(alphabet=st.sampled_from('ab-."\\/\n\tÿ€😀'), min_size=1, max_size=6)


@given(
    st.lists(_NAME, max_size=6),
    st.dictionaries(_NAME, _NAME, max_size=6),
    st.dictionaries(_NAME, _NAME, max_size=6),
    st.text(max_size=8),
    st.booleans(),
)
def test_filter_reply_is_the_whole_result_encoded_at_once(
    passed: list[str], failed: dict[str, str], unresolvable: dict[str, str], error: str, names_mode: bool
) -> None:
    """The reply written piecewise (pre-encoded members) is byte for byte what orjson writes for the whole
    result, in either mode, whatever the names and reasons hold."""
    pod = pod_doc("p", neuron=1)
    every = list(dict.fromkeys([*passed, *failed, *unresolvable]))
    doc = names_args(pod, every) if names_mode else nodes_args(pod, [node_doc(n) for n in every])
    args = parse_extender_args(doc)
    whole = {
        "Nodes": None if names_mode else {"items": [node_doc(n) for n in every if n in set(passed)]},
        "NodeNames": passed if names_mode else None,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": unresolvable,
        "Error": error,
    }
    assert encode_filter_result(args, passed, failed, unresolvable, error) == orjson.dumps(whole)


def test_an_overlong_node_name_is_not_a_wire_error() -> None:
    # It cannot be a Node's name, so the node cache does not hold it: filter answers it as an unknown node.
    assert parse_extender_args(names_args(pod_doc("p"), ["n" * 300])).node_names == ("n" * 300,)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "Pod",
                    "Nodes",
                    "NodeNames",
                    "items",
                    "metadata",
                    "name",
                    "spec",
                    "containers",
                    "resources",
                    "limits",
                    "annotations",
                ]
            ),
            inner,
            max_size=4,
        ),
        max_leaves=20,
    )
)
def test_any_json_either_parses_or_raises_wire_error(doc: Any) -> None:
    try:
        args = parse_extender_args(doc)
    except WireError:
        return
    assert isinstance(args, ExtenderArgs)
    assert all(isinstance(n, NodeInfo) for n in args.nodes or ())


# ---- every decoder is bounded and raises only WireError, with a short message ----------------------------

_VOCABULARY = [
    "Pod", "Nodes", "NodeNames", "items", "metadata", "name", "namespace", "uid", "spec", "status", "phase",
    "containers", "initContainers", "resources", "limits", "requests", "annotations", "nodeName", "schedulerName",
    "creationTimestamp", "restartPolicy", "PodName", "PodNamespace", "PodUID", "Node", "aws.amazon.com/neuron",
    "aws.amazon.com/neuroncore", "Always",
]  # fmt: skip
_HOSTILE_TEXT = (
    st.text(max_size=6)
    | st.sampled_from(_VOCABULARY)
    | st.integers(min_value=0, max_value=6000).map(lambda n: "9" * n)  # digit strings up to 6,000 long
    | st.integers(min_value=0, max_value=3000).map(lambda n: 'é\n"' * n)  # long text that escapes
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats() | _HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_HOSTILE_TEXT, inner, max_size=5),
    max_leaves=30,
)


def _only_wire_error(decode: Any, doc: Any) -> None:
    try:
        decode(doc)
    except WireError as err:
        assert len(str(err)) <= 600, len(str(err))


@given(_JSON)
def test_every_wire_decoder_raises_only_a_short_wire_error(doc: Any) -> None:
    from extender.wire import parse_node, parse_pod

    for decode in (parse_extender_args, parse_binding_args, parse_pod, parse_node):
        _only_wire_error(decode, doc)
    # The same document inside the envelopes the decoders descend into.
    _only_wire_error(parse_extender_args, {"Pod": doc, "NodeNames": ["a"]})
    _only_wire_error(parse_extender_args, {"Pod": pod_doc("p"), "Nodes": {"items": [doc]}})
    _only_wire_error(parse_pod, {"metadata": {"name": "p"}, "spec": {"containers": [{"resources": {"limits": doc}}]}})


@given(st.binary(max_size=200) | _JSON.map(orjson.dumps))
def test_decode_json_raises_only_a_short_wire_error(body: bytes) -> None:
    _only_wire_error(decode_json, body)


@pytest.mark.parametrize("resource", ["aws.amazon.com/neuron", "aws.amazon.com/neuroncore"])
@pytest.mark.parametrize("digits", [5000, 4301, 20])
def test_a_huge_quantity_is_a_wire_error_with_a_short_message(resource: str, digits: int) -> None:
    doc = pod_doc("p", containers=[{"name": "c" * 63, "resources": {"limits": {resource: "7" * digits}}}])
    with pytest.raises(WireError) as caught:
        parse_extender_args(names_args(doc, ["n"]))
    assert "above 4096" in str(caught.value) and len(str(caught.value)) <= 600


def test_messages_quoting_input_are_short() -> None:
    key = "k" * 100_000
    cases: list[Any] = [
        {"Pod": pod_doc("p"), "Nodes": {"items": [{"metadata": {"name": "n", "annotations": {key: 1}}}]}},
        {"Pod": pod_doc("p", containers=[{"name": "c", "resources": {"limits": {key: [1]}}}]), "NodeNames": []},
        {"Pod": {"metadata": {"name": "n" * 100_000}}, "NodeNames": []},
        {"Pod": pod_doc("p", containers=[{"name": "c", "resources": {"limits": {NEURON: "x" * 100_000}}}])},
    ]
    for doc in cases:
        with pytest.raises(WireError) as caught:
            parse_extender_args(doc)
        assert len(str(caught.value)) <= 600, str(caught.value)[:200]


NEURON = "aws.amazon.com/neuron"
