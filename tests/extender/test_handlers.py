"""The verbs called directly, without HTTP: `Handlers.filter`, `prioritize` and `bind` take a body already read
and answer a `Reply` (or raise `HttpError`, which the guard turns into a JSON error). The HTTP layer around them
(caps, budget, timeouts, metrics) is tested over real sockets in test_http_*.py and test_limits.py."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from extender.cache import ClusterStore
from extender.metrics import ExtenderMetrics
from extender.server import Handlers, HttpError, ServerSettings
from extender.verdicts import Verdicts

from .builders import names_args, node_doc, node_state, nodes_args, pod_doc

NODES = [node_doc("roomy", node_state("inf2.48xlarge")), node_doc("full", node_state("inf1.6xlarge", used_devices=[0]))]
POD = pod_doc("p", neuron=4)


def handlers(*, synced: bool = True, standalone: bool = False) -> Handlers:
    store = ClusterStore()
    if synced:
        store.apply("nodes", "SYNC", tuple(NODES))
        store.apply("pods", "SYNC", ())
    return Handlers(ServerSettings(standalone=standalone), Verdicts(store), None, ExtenderMetrics())


def test_filter_and_prioritize_answer_both_modes() -> None:
    verbs = handlers()
    for args in (names_args(POD, ["roomy", "full"]), nodes_args(POD, NODES)):
        filtered = asyncio.run(verbs.filter(orjson.dumps(args)))
        assert filtered.result == "ok" and filtered.status == 200
        reply = orjson.loads(filtered.body)
        passed = reply["NodeNames"] or [n["metadata"]["name"] for n in reply["Nodes"]["items"]]
        assert passed == ["roomy"] and set(reply["FailedNodes"]) == {"full"}
        scored = orjson.loads(asyncio.run(verbs.prioritize(orjson.dumps(args))).body)
        assert [h["Host"] for h in scored] == ["roomy", "full"] and scored[1]["Score"] == 0


def test_names_before_the_first_list_are_an_error_not_a_guess() -> None:
    verbs = handlers(synced=False)
    filtered = asyncio.run(verbs.filter(orjson.dumps(names_args(POD, ["roomy"]))))
    assert filtered.result == "error" and "first list" in orjson.loads(filtered.body)["Error"]
    with pytest.raises(HttpError) as caught:
        asyncio.run(verbs.prioritize(orjson.dumps(names_args(POD, ["roomy"]))))
    assert caught.value.status == 503


def test_standalone_refuses_names_and_bind() -> None:
    verbs = handlers(standalone=True)
    with pytest.raises(HttpError) as caught:
        asyncio.run(verbs.prioritize(orjson.dumps(names_args(POD, ["roomy"]))))
    assert caught.value.status == 400 and "standalone" in caught.value.message
    body = orjson.dumps({"PodName": "p", "PodNamespace": "default", "PodUID": "u", "Node": "roomy"})
    bound = asyncio.run(verbs.bind(body, deadline=0.0))
    assert bound.result == "error" and "cannot bind" in orjson.loads(bound.body)["Error"]


@pytest.mark.parametrize("verb", ["filter", "prioritize", "bind"])
def test_a_malformed_body_is_a_400(verb: str) -> None:
    verbs = handlers()
    with pytest.raises(HttpError) as caught:
        if verb == "bind":
            asyncio.run(verbs.bind(b"{not json", deadline=0.0))
        else:
            asyncio.run(getattr(verbs, verb)(b'{"Pod": 7}'))
    assert caught.value.status == 400
